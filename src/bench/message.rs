//! [`BenchMessage`]: the typed message of the transports that send a Rust value rather than
//! `--size` raw bytes.
//!
//! It stands for an ordinary application message of about 1 KiB: a sequence number, a string,
//! a vector and a few scalars, every field derived from the sequence number so that the
//! receiver can check all of it. It derives rkyv's traits always (zero-copy reading of the
//! archived form, [`ArchivedBenchMessage`]) and serde's with the `peers` feature (ipc-channel
//! sends it through serde and bincode).
//!
//! Which transports send it: `ipc-channel` (serde, bincode) now; the `typed` transport, shmesh's
//! own rkyv channel, will send the same message and check it in place with
//! [`ArchivedBenchMessage::check`].
//!
//! # Examples
//!
//! ```
//! use shmesh::bench::message::BenchMessage;
//!
//! let mut msg = BenchMessage::new(7); // allocates, once
//! msg.check(7).unwrap();
//! msg.refill(8); // in place, no allocation
//! msg.check(8).unwrap();
//! assert!(msg.check(7).is_err());
//!
//! let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&msg).unwrap();
//! let archived = rkyv::access::<shmesh::bench::message::ArchivedBenchMessage, rkyv::rancor::Error>(&bytes).unwrap();
//! archived.check(8).unwrap();
//! ```

use super::error::BenchError;

/// Characters in [`BenchMessage::text`] (ASCII: as many bytes).
pub const TEXT_LEN: usize = 100;
/// Values in [`BenchMessage::values`].
pub const VALUES_LEN: usize = 220;

/// The characters `text` is made of.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A typed benchmark message of about 1 KiB (1017 bytes with bincode, about 1 KiB archived
/// by rkyv), every field derived from `seq`.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[cfg_attr(feature = "peers", derive(serde::Serialize, serde::Deserialize))]
pub struct BenchMessage {
    /// The sequence number.
    pub seq: u64,
    /// [`TEXT_LEN`] ASCII characters derived from `seq`.
    pub text: String,
    /// [`VALUES_LEN`] numbers derived from `seq`.
    pub values: Vec<u32>,
    /// `seq / 2 + 0.25` (exact up to 2^52).
    pub ratio: f64,
    /// A 32-bit mix of `seq`.
    pub count: u32,
    /// Whether `seq` is a multiple of 3.
    pub flag: bool,
}

#[inline]
fn text_byte(seq: u64, i: usize) -> u8 {
    ALPHABET[(seq.wrapping_mul(31).wrapping_add(i as u64 * 7) % 64) as usize]
}

#[inline]
fn value(seq: u64, i: usize) -> u32 {
    (seq as u32).wrapping_mul(0x9e37_79b9) ^ (i as u32).wrapping_mul(0x85eb_ca6b)
}

#[inline]
fn ratio(seq: u64) -> f64 {
    (seq >> 1) as f64 + if seq & 1 == 1 { 0.75 } else { 0.25 }
}

#[inline]
fn count(seq: u64) -> u32 {
    ((seq ^ (seq >> 32)) as u32).rotate_left(7) ^ 0x5bd1_e995
}

#[inline]
fn flag(seq: u64) -> bool {
    seq % 3 == 0
}

fn mismatch(seq: u64, detail: String) -> BenchError {
    BenchError::Corrupt { seq, detail }
}

/// Checks every field of message `seq`, however it is stored: `text` as a string, `values`
/// as an iterator of native numbers.
fn check_fields(
    seq: u64,
    found_seq: u64,
    text: &str,
    values: impl ExactSizeIterator<Item = u32>,
    found_ratio: f64,
    found_count: u32,
    found_flag: bool,
) -> Result<(), BenchError> {
    if found_seq != seq {
        return Err(mismatch(
            seq,
            format!("its seq field holds sequence number {found_seq}"),
        ));
    }
    if text.len() != TEXT_LEN {
        return Err(mismatch(
            seq,
            format!("its text is {} bytes long, expected {TEXT_LEN}", text.len()),
        ));
    }
    if let Some(i) = text
        .bytes()
        .enumerate()
        .position(|(i, b)| b != text_byte(seq, i))
    {
        return Err(mismatch(seq, format!("its text differs at byte {i}")));
    }
    if values.len() != VALUES_LEN {
        return Err(mismatch(
            seq,
            format!("it has {} values, expected {VALUES_LEN}", values.len()),
        ));
    }
    for (i, v) in values.enumerate() {
        if v != value(seq, i) {
            return Err(mismatch(
                seq,
                format!("its value {i} is {v}, expected {}", value(seq, i)),
            ));
        }
    }
    if found_ratio.to_bits() != ratio(seq).to_bits() {
        return Err(mismatch(
            seq,
            format!("its ratio is {found_ratio}, expected {}", ratio(seq)),
        ));
    }
    if found_count != count(seq) {
        return Err(mismatch(
            seq,
            format!("its count is {found_count}, expected {}", count(seq)),
        ));
    }
    if found_flag != flag(seq) {
        return Err(mismatch(seq, format!("its flag is {found_flag}")));
    }
    Ok(())
}

fn check_seq_only(seq: u64, found_seq: u64) -> Result<(), BenchError> {
    if found_seq == seq {
        Ok(())
    } else {
        Err(mismatch(
            seq,
            format!("its seq field holds sequence number {found_seq}"),
        ))
    }
}

impl BenchMessage {
    /// Message `seq`, every field derived from it. Allocates the string and the vector: call it
    /// at set-up, then [`refill`](Self::refill).
    pub fn new(seq: u64) -> BenchMessage {
        let mut msg = BenchMessage {
            seq,
            text: String::with_capacity(TEXT_LEN),
            values: Vec::with_capacity(VALUES_LEN),
            ratio: 0.0,
            count: 0,
            flag: false,
        };
        msg.refill(seq);
        msg
    }

    /// Turns this message into message `seq` in place, rewriting every field. Does not allocate
    /// when the string and the vector have their capacity for [`TEXT_LEN`] and [`VALUES_LEN`]
    /// (as any message made by [`new`](Self::new) or received and checked has).
    pub fn refill(&mut self, seq: u64) {
        self.seq = seq;
        self.text.clear();
        self.text
            .extend((0..TEXT_LEN).map(|i| char::from(text_byte(seq, i))));
        self.values.clear();
        self.values.extend((0..VALUES_LEN).map(|i| value(seq, i)));
        self.ratio = ratio(seq);
        self.count = count(seq);
        self.flag = flag(seq);
    }

    /// Checks that this is message `seq`, reading every field.
    ///
    /// # Errors
    ///
    /// [`BenchError::Corrupt`] naming the first field that differs.
    pub fn check(&self, seq: u64) -> Result<(), BenchError> {
        check_fields(
            seq,
            self.seq,
            &self.text,
            self.values.iter().copied(),
            self.ratio,
            self.count,
            self.flag,
        )
    }

    /// Checks the sequence number only (`--touch none`).
    ///
    /// # Errors
    ///
    /// [`BenchError::Corrupt`] when it differs.
    pub fn check_seq(&self, seq: u64) -> Result<(), BenchError> {
        check_seq_only(seq, self.seq)
    }
}

impl ArchivedBenchMessage {
    /// Checks that this archived message is message `seq`, reading every field in place.
    ///
    /// # Errors
    ///
    /// [`BenchError::Corrupt`] naming the first field that differs.
    pub fn check(&self, seq: u64) -> Result<(), BenchError> {
        check_fields(
            seq,
            self.seq.to_native(),
            self.text.as_str(),
            self.values.iter().map(|v| v.to_native()),
            self.ratio.to_native(),
            self.count.to_native(),
            self.flag,
        )
    }

    /// Checks the sequence number only (`--touch none`).
    ///
    /// # Errors
    ///
    /// [`BenchError::Corrupt`] when it differs.
    pub fn check_seq(&self, seq: u64) -> Result<(), BenchError> {
        check_seq_only(seq, self.seq.to_native())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(msg: &BenchMessage) -> rkyv::util::AlignedVec {
        rkyv::to_bytes::<rkyv::rancor::Error>(msg).unwrap()
    }

    fn access(bytes: &[u8]) -> &ArchivedBenchMessage {
        rkyv::access::<ArchivedBenchMessage, rkyv::rancor::Error>(bytes).unwrap()
    }

    #[test]
    fn new_then_check_for_many_sequence_numbers() {
        for seq in [0, 1, 2, 3, 63, 64, 1 << 32, u64::MAX - 1, u64::MAX] {
            let msg = BenchMessage::new(seq);
            msg.check(seq).unwrap();
            msg.check_seq(seq).unwrap();
            assert_eq!(msg.text.len(), TEXT_LEN);
            assert_eq!(msg.values.len(), VALUES_LEN);
            assert!(msg.check(seq.wrapping_add(1)).is_err());
        }
    }

    #[test]
    fn refill_equals_new_and_keeps_the_allocations() {
        let mut msg = BenchMessage::new(1);
        let text = msg.text.as_ptr();
        let values = msg.values.as_ptr();
        for seq in [2, 3, 1000, u64::MAX] {
            msg.refill(seq);
            assert_eq!(msg, BenchMessage::new(seq));
            assert_eq!(msg.text.as_ptr(), text, "the string was reallocated");
            assert_eq!(msg.values.as_ptr(), values, "the vector was reallocated");
        }
    }

    #[test]
    fn consecutive_messages_differ_in_every_field() {
        let (a, b) = (BenchMessage::new(5), BenchMessage::new(6));
        assert_ne!(a.seq, b.seq);
        assert_ne!(a.text, b.text);
        assert!(a.values.iter().zip(&b.values).all(|(x, y)| x != y));
        assert_ne!(a.ratio, b.ratio);
        assert_ne!(a.count, b.count);
        assert_ne!(a.flag, b.flag);
    }

    #[test]
    fn every_field_is_checked() {
        let good = BenchMessage::new(42);
        let mut bad: Vec<(BenchMessage, &str)> = Vec::new();
        let mut m = good.clone();
        m.seq = 41;
        bad.push((m, "sequence number 41"));
        let mut m = good.clone();
        m.text.replace_range(50..51, "~");
        bad.push((m, "text differs at byte 50"));
        let mut m = good.clone();
        m.text.push('x');
        bad.push((m, "text is 101 bytes"));
        let mut m = good.clone();
        m.values[219] ^= 1;
        bad.push((m, "value 219"));
        let mut m = good.clone();
        m.values.pop();
        bad.push((m, "219 values"));
        let mut m = good.clone();
        m.ratio += 1.0;
        bad.push((m, "ratio"));
        let mut m = good.clone();
        m.count ^= 1;
        bad.push((m, "count"));
        let mut m = good.clone();
        m.flag = !m.flag;
        bad.push((m, "flag"));
        for (msg, expected) in bad {
            let err = msg.check(42).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
            let bytes = archive(&msg);
            let err = access(&bytes).check(42).unwrap_err().to_string();
            assert!(err.contains(expected), "archived, {expected}: {err}");
        }
    }

    #[test]
    fn the_archived_message_checks_in_place_and_is_about_one_kib() {
        let msg = BenchMessage::new(123_456_789);
        let bytes = archive(&msg);
        assert!((900..=1100).contains(&bytes.len()), "{} bytes", bytes.len());
        let archived = access(&bytes);
        archived.check(123_456_789).unwrap();
        archived.check_seq(123_456_789).unwrap();
        assert!(archived.check_seq(1).is_err());
        let back: BenchMessage =
            rkyv::deserialize::<BenchMessage, rkyv::rancor::Error>(archived).unwrap();
        assert_eq!(back, msg);
    }

    #[cfg(feature = "peers")]
    #[test]
    fn the_bincode_message_is_about_one_kib() {
        let msg = BenchMessage::new(9);
        let bytes = bincode::serialize(&msg).unwrap();
        assert_eq!(bytes.len(), 1017);
        let back: BenchMessage = bincode::deserialize(&bytes).unwrap();
        back.check(9).unwrap();
    }
}
