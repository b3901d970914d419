//! Forwarding a rank's stdout and stderr, line by line, with a `[rank] ` prefix.
//!
//! One thread per stream. Each line is written whole, with one `write_all` under the lock of
//! the launcher's stdout or stderr, so lines of different ranks never mix (a line is the unit
//! of interleaving; `--no-prefix` keeps that). Bytes pass through unchanged, UTF-8 or not. A
//! final line without a newline gets one, and so does each piece of a line longer than
//! [`MAX_LINE`] (split there, so one rank cannot make the launcher buffer without bound).
//! When the launcher's own output is gone (a closed pipe), the thread keeps reading and
//! drops what it reads, so the rank is never blocked on a full pipe.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc::Sender;
use std::thread::{self, JoinHandle};

/// A line longer than this is forwarded in pieces of this size, each ended with a newline.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// Which stream of the launcher a rank's stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sink {
    Stdout,
    Stderr,
}

/// Starts a thread that forwards `from` to `sink` until end of file, then sends `done`.
pub(super) fn forward<R, E>(
    from: R,
    sink: Sink,
    prefix: Option<String>,
    done_tx: Sender<E>,
    done: E,
) -> io::Result<JoinHandle<()>>
where
    R: Read + Send + 'static,
    E: Send + 'static,
{
    thread::Builder::new()
        .name(format!("shmesh-run-{sink:?}"))
        .spawn(move || {
            copy_lines(from, prefix.as_deref().unwrap_or(""), |line| match sink {
                Sink::Stdout => io::stdout().lock().write_all(line),
                Sink::Stderr => io::stderr().lock().write_all(line),
            });
            let _ = done_tx.send(done);
        })
}

/// Reads `from` to its end and hands each line, prefixed and newline-terminated, to `write`.
/// After `write` fails once, the rest is read and dropped.
pub(super) fn copy_lines(
    from: impl Read,
    prefix: &str,
    mut write: impl FnMut(&[u8]) -> io::Result<()>,
) {
    let mut reader = BufReader::with_capacity(MAX_LINE, from);
    let mut line = Vec::with_capacity(prefix.len() + 256);
    line.extend_from_slice(prefix.as_bytes());
    let mut sink_ok = true;
    let mut emit = |line: &mut Vec<u8>| {
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        if sink_ok {
            sink_ok = write(line).is_ok();
        }
        line.truncate(prefix.len());
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A read error on a pipe: treat as its end.
            Err(_) => &[],
        };
        if buf.is_empty() {
            if line.len() > prefix.len() {
                emit(&mut line);
            }
            return;
        }
        let room = MAX_LINE - (line.len() - prefix.len());
        match buf.iter().take(room).position(|&b| b == b'\n') {
            Some(at) => {
                line.extend_from_slice(&buf[..=at]);
                reader.consume(at + 1);
                emit(&mut line);
            }
            None => {
                let take = buf.len().min(room);
                line.extend_from_slice(&buf[..take]);
                reader.consume(take);
                if line.len() - prefix.len() == MAX_LINE {
                    emit(&mut line);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], prefix: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        copy_lines(input, prefix, |l| {
            out.push(l.to_vec());
            Ok(())
        });
        out
    }

    #[test]
    fn whole_lines_with_prefix_and_a_final_unterminated_one() {
        assert_eq!(
            lines(b"one\ntwo\n\nlast", "[3] "),
            [&b"[3] one\n"[..], b"[3] two\n", b"[3] \n", b"[3] last\n"]
        );
        assert_eq!(lines(b"", "[0] "), Vec::<Vec<u8>>::new());
        assert_eq!(lines(b"x\n", ""), [b"x\n"]);
    }

    #[test]
    fn bytes_pass_through_unchanged() {
        assert_eq!(
            lines(b"\xff\xfe bad\r\n", "[1] "),
            [b"[1] \xff\xfe bad\r\n".to_vec()]
        );
    }

    #[test]
    fn a_long_line_is_split_at_the_limit() {
        let mut input = vec![b'a'; MAX_LINE];
        input.extend_from_slice(b"bc\n");
        input.extend(vec![b'd'; 2 * MAX_LINE + 5]);
        let out = lines(&input, "> ");
        let lens: Vec<usize> = out.iter().map(Vec::len).collect();
        assert_eq!(
            lens,
            [MAX_LINE + 3, 2 + 3, MAX_LINE + 3, MAX_LINE + 3, 5 + 3],
            "each piece is prefixed and newline-terminated"
        );
        let rebuilt: Vec<u8> = out
            .iter()
            .flat_map(|l| l[2..l.len() - 1].iter().copied())
            .collect();
        let expected: Vec<u8> = input.into_iter().filter(|&b| b != b'\n').collect();
        assert_eq!(rebuilt, expected, "no byte lost or added but newlines");
    }

    #[test]
    fn a_failed_write_drains_the_rest() {
        let mut calls = 0;
        let input = b"a\nb\nc\n".repeat(1000);
        copy_lines(&input[..], "", |_| {
            calls += 1;
            Err(io::ErrorKind::BrokenPipe.into())
        });
        assert_eq!(calls, 1, "no write after the first failure");
    }
}
