//! The hosts file of `shmesh run --hosts FILE`: which hosts the ranks run on, how many on
//! each, and how to start a program there.
//!
//! One host per line, in the order ranks fill them:
//!
//! ```text
//! # NAME  slots=N  [exec="PREFIX ARGS"]  [bridge=ADDR:PORT]
//! node-a  slots=4                                  # ranks 0-3, started with `ssh node-a ...`
//! node-b  slots=2  exec="ip netns exec node-b"     # ranks 4-5
//! local   slots=2  exec=""  bridge=10.0.0.1:7600   # ranks 6-7, started directly here
//! ```
//!
//! - `NAME`: `[A-Za-z0-9._-]`, not starting with `-`, unique in the file; ranks see it as
//!   `SHMESH_HOST`.
//! - `slots=N` (required): how many ranks the host takes, at least 1.
//! - `exec="PREFIX ARGS"`: the command that runs a program on the host; the launcher appends
//!   `env SHMESH_...=... PROGRAM ARGS...` to it. Split into words as a shell would (quotes and
//!   backslashes), without any expansion. Default `ssh NAME`; `exec=""` starts the ranks
//!   directly on this machine.
//! - `bridge=ADDR:PORT`: where the host's bridge listens; carried in [`Host::bridge`] for the
//!   message-passing layer, not used by the launcher.
//! - `#` outside quotes starts a comment, to the end of the line; blank lines are skipped.
//!
//! A value may be quoted with `"..."` or `'...'` (needed when it holds blanks); a backslash
//! outside single quotes takes the next character literally.

use std::path::Path;

use thiserror::Error;

/// The longest host name accepted (that of a DNS name).
pub const MAX_HOST_NAME_LEN: usize = 253;

/// One line of a hosts file: a host and how to run ranks on it.
///
/// # Examples
///
/// ```
/// use shmesh::run::parse_hosts;
///
/// let hosts = parse_hosts(
///     "a slots=2\nb slots=1 exec=\"ip netns exec b\" bridge=10.0.0.2:7600\n",
///     "example",
/// )?;
/// assert_eq!(hosts[0].exec, ["ssh", "a"]);
/// assert_eq!(hosts[1].exec, ["ip", "netns", "exec", "b"]);
/// assert_eq!(hosts[1].bridge.as_deref(), Some("10.0.0.2:7600"));
/// # Ok::<(), shmesh::run::HostsError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host's name: `[A-Za-z0-9._-]`, 1 to [`MAX_HOST_NAME_LEN`] characters, not starting
    /// with `-`; unique in its file.
    pub name: String,
    /// How many ranks the host takes: at least 1.
    pub slots: usize,
    /// The command prefix that runs a program on the host, one word per element: `exec=`
    /// split into words, `["ssh", NAME]` when the line has no `exec=`. Empty: the ranks are
    /// started directly, on the machine of the launcher.
    pub exec: Vec<String>,
    /// `bridge=ADDR:PORT`: where the host's bridge listens, as written (`ADDR` a name, an IPv4
    /// address or a bracketed IPv6 address; `PORT` 1 to 65535). `None` without `bridge=`.
    pub bridge: Option<String>,
}

/// A hosts file that could not be read or parsed.
#[derive(Debug, Error)]
pub enum HostsError {
    /// The file could not be read.
    #[error("cannot read the hosts file {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("hosts file {file}, line {line} (`{text}`): {problem}")]
    Line {
        /// The file.
        file: String,
        /// The line number, from 1.
        line: usize,
        /// The line, trimmed.
        text: String,
        /// What is wrong with it and how to write it.
        problem: String,
    },
    /// The file lists no host.
    #[error("the hosts file {file} lists no host: write one line `NAME slots=N` per host")]
    Empty {
        /// The file.
        file: String,
    },
}

/// Reads and parses the hosts file `path` (see the [module docs](self) for the format).
///
/// # Errors
///
/// [`HostsError::Read`] when the file cannot be read, otherwise as [`parse_hosts`].
pub fn read_hosts(path: &Path) -> Result<Vec<Host>, HostsError> {
    let file = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| HostsError::Read {
        file: file.clone(),
        source,
    })?;
    parse_hosts(&String::from_utf8_lossy(&text), &file)
}

/// Parses the text of a hosts file; `file` names it in errors.
///
/// # Errors
///
/// [`HostsError::Line`] naming the first wrong line and what is wrong with it (an unknown or
/// repeated setting, a missing or zero `slots=`, a bad name or `bridge=` address, an
/// unterminated quote, a host named twice); [`HostsError::Empty`] when no line names a host.
pub fn parse_hosts(text: &str, file: &str) -> Result<Vec<Host>, HostsError> {
    let mut hosts: Vec<(usize, Host)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let fail = |problem: String| HostsError::Line {
            file: file.to_owned(),
            line,
            text: raw.trim().to_owned(),
            problem,
        };
        let words = split_words(raw, true).map_err(fail)?;
        if words.is_empty() {
            continue;
        }
        let host = parse_line(&words).map_err(fail)?;
        if let Some((first, _)) = hosts.iter().find(|(_, h)| h.name == host.name) {
            return Err(fail(format!(
                "host '{}' is already listed on line {first}: give it one line, with \
                 slots=N for all of its ranks",
                host.name
            )));
        }
        hosts.push((line, host));
    }
    if hosts.is_empty() {
        return Err(HostsError::Empty {
            file: file.to_owned(),
        });
    }
    Ok(hosts.into_iter().map(|(_, h)| h).collect())
}

/// One host from the words of its line.
fn parse_line(words: &[String]) -> Result<Host, String> {
    let name = &words[0];
    check_name(name)?;
    let (mut slots, mut exec, mut bridge) = (None, None, None);
    for word in &words[1..] {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!(
                "expected KEY=VALUE after the host name, found '{word}' (settings: slots=N, \
                 exec=\"PREFIX ARGS\", bridge=ADDR:PORT)"
            ));
        };
        let seen = match key {
            "slots" => slots.replace(parse_slots(value)?).is_some(),
            "exec" => exec.replace(split_words(value, false)?).is_some(),
            "bridge" => bridge.replace(parse_bridge(value)?).is_some(),
            other => {
                return Err(format!(
                    "unknown setting '{other}' (settings: slots=N, exec=\"PREFIX ARGS\", \
                     bridge=ADDR:PORT)"
                ))
            }
        };
        if seen {
            return Err(format!("'{key}=' is given twice: give it once"));
        }
    }
    let slots = slots.ok_or_else(|| {
        format!("host '{name}' has no slots=N: say how many ranks it takes, e.g. `{name} slots=2`")
    })?;
    Ok(Host {
        exec: exec.unwrap_or_else(|| vec!["ssh".to_owned(), name.clone()]),
        name: name.clone(),
        slots,
        bridge,
    })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.contains('=') {
        return Err(format!(
            "the line must start with the host name, found '{name}' (format: NAME slots=N \
             [exec=\"PREFIX ARGS\"] [bridge=ADDR:PORT])"
        ));
    }
    if name.len() > MAX_HOST_NAME_LEN {
        return Err(format!(
            "host name is {} characters long, at most {MAX_HOST_NAME_LEN}",
            name.len()
        ));
    }
    if name.starts_with('-') {
        return Err(format!(
            "host name '{name}' starts with '-' (it would read as an option of ssh)"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(format!(
            "host name '{name}' has the character {c:?}: use only [A-Za-z0-9._-]"
        ));
    }
    Ok(())
}

fn parse_slots(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("slots=0: a host takes at least 1 rank (leave it out instead)".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "slots='{value}' is not a whole number: write slots=N with N >= 1"
        )),
    }
}

fn parse_bridge(value: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "bridge='{value}': {why} (write bridge=ADDR:PORT, e.g. bridge=10.0.0.2:7600 or \
             bridge=[fd00::2]:7600)"
        )
    };
    let (addr, port) = value.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if addr.is_empty() {
        return Err(bad("no address"));
    }
    if addr.contains(':') && !(addr.starts_with('[') && addr.ends_with(']')) {
        return Err(bad("an IPv6 address goes in brackets"));
    }
    if addr.chars().any(char::is_whitespace) {
        return Err(bad("the address has a blank"));
    }
    match port.parse::<u16>() {
        Ok(1..) => Ok(value.to_owned()),
        _ => Err(bad("the port must be a number from 1 to 65535")),
    }
}

/// Splits `text` into words as a POSIX shell would, without expansions: blanks separate words,
/// `'...'` is literal, `"..."` is literal except that a backslash takes the next `"`, `\` or
/// `$`/`` ` ``, and a backslash outside quotes takes the next character. With `comments`, an
/// unquoted `#` at the start of a word ends the text.
fn split_words(text: &str, comments: bool) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '#' if comments && word.is_none() => break,
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(unterminated('\'')),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(unterminated('"')),
                        },
                        Some(c) => w.push(c),
                        None => return Err(unterminated('"')),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("a backslash ends the line: nothing to take literally".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    Ok(words)
}

fn unterminated(quote: char) -> String {
    format!("the quote {quote} is not closed: close it on the same line")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, slots: usize, exec: &[&str], bridge: Option<&str>) -> Host {
        Host {
            name: name.into(),
            slots,
            exec: exec.iter().map(|s| s.to_string()).collect(),
            bridge: bridge.map(Into::into),
        }
    }

    #[test]
    fn every_setting_comments_and_blank_lines() {
        let text = "\
# the cluster
node-a slots=4
  node-b   slots=2   exec=\"ip netns exec node-b\"   # second
\t
local slots=1 exec=\"\" bridge=10.0.0.1:7600
v6 bridge=[fd00::2]:7601 slots=3 exec='ssh -o \"ProxyJump=gw one\" v6'
";
        let hosts = parse_hosts(text, "h").unwrap();
        assert_eq!(
            hosts,
            vec![
                host("node-a", 4, &["ssh", "node-a"], None),
                host("node-b", 2, &["ip", "netns", "exec", "node-b"], None),
                host("local", 1, &[], Some("10.0.0.1:7600")),
                host(
                    "v6",
                    3,
                    &["ssh", "-o", "ProxyJump=gw one", "v6"],
                    Some("[fd00::2]:7601")
                ),
            ]
        );
    }

    #[test]
    fn quoting_follows_the_shell() {
        let words = |s| split_words(s, true).unwrap();
        assert_eq!(words(r#"a"b c"d 'e f'"#), ["ab cd", "e f"]);
        assert_eq!(words(r#"x\ y "q\"r" 's\n'"#), ["x y", "q\"r", "s\\n"]);
        assert_eq!(words("a#b # c"), ["a#b"]);
        assert_eq!(words("'#' \"#\" \\#"), ["#", "#", "#"]);
        assert_eq!(words("''"), [""]);
        assert!(split_words("a 'b", true)
            .unwrap_err()
            .contains("not closed"));
        assert!(split_words("a \"b", true)
            .unwrap_err()
            .contains("not closed"));
        assert!(split_words("a \\", true).unwrap_err().contains("backslash"));
        // Without comments (an exec value) `#` is an ordinary character.
        assert_eq!(split_words("a #b", false).unwrap(), ["a", "#b"]);
    }

    /// The error for `text`, which must be on line `line`, and its message.
    fn line_error(text: &str, line: usize) -> String {
        match parse_hosts(text, "hosts.txt") {
            Err(e @ HostsError::Line { line: l, .. }) if l == line => e.to_string(),
            other => panic!("expected an error on line {line} for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn each_mistake_names_its_line_and_the_fix() {
        let cases = [
            ("a slots=1\nb\n", 2, "has no slots=N"),
            ("a slots=0", 1, "at least 1 rank"),
            ("a slots=two", 1, "not a whole number"),
            ("a slots=-1", 1, "not a whole number"),
            ("a slots=1 slots=2", 1, "given twice"),
            ("a slots=1 cpus=2", 1, "unknown setting 'cpus'"),
            ("a slots=1 fast", 1, "expected KEY=VALUE"),
            ("slots=2", 1, "must start with the host name"),
            ("a/b slots=1", 1, "the character '/'"),
            ("-oProxy slots=1", 1, "starts with '-'"),
            ("a slots=1\n\n# x\na slots=2", 4, "already listed on line 1"),
            ("a slots=1 exec=\"ssh a", 1, "not closed"),
            ("a slots=1 exec=\"ssh 'a\"", 1, "not closed"),
            ("a slots=1 bridge=10.0.0.1", 1, "no port"),
            ("a slots=1 bridge=host:0", 1, "the port must be"),
            ("a slots=1 bridge=host:70000", 1, "the port must be"),
            ("a slots=1 bridge=:7600", 1, "no address"),
            ("a slots=1 bridge=7600", 1, "no port"),
            ("a slots=1 bridge=fd00::1:7600", 1, "in brackets"),
        ];
        for (text, line, needle) in cases {
            let msg = line_error(text, line);
            assert!(
                msg.contains(needle) && msg.contains(&format!("hosts.txt, line {line}")),
                "{text:?}: message '{msg}' lacks '{needle}'"
            );
        }
        let long = format!("{} slots=1", "h".repeat(MAX_HOST_NAME_LEN + 1));
        assert!(line_error(&long, 1).contains("at most 253"));
        assert!(parse_hosts(&long[1..], "x").is_ok());
    }

    #[test]
    fn a_file_without_hosts_is_an_error() {
        for text in ["", "\n# only a comment\n   \n"] {
            assert!(matches!(
                parse_hosts(text, "f"),
                Err(HostsError::Empty { file }) if file == "f"
            ));
        }
    }

    #[test]
    fn reading_a_missing_file_names_it() {
        let e = read_hosts(Path::new("/nonexistent/shmesh-hosts")).unwrap_err();
        assert!(matches!(e, HostsError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/shmesh-hosts"));
    }
}
