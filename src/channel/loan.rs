//! Loans: payloads built in place in the ring, for plain data that needs no serialization.
//!
//! A loan is ring space claimed for one message and handed out as `&mut T` ([`Loan`]) or
//! `&mut [U]` ([`SliceLoan`]); [`send`](Loan::send) commits it, dropping it gives the space
//! back. Loans exist where the archived form of the type *is* the type, so the bytes written
//! are already the message the receiver reads as `&Archived<T>`:
//!
//! - `Sender<T>::loan` for `T: Pod + Archive<Archived = T>`: byte arrays such as
//!   `[u8; 4096]`, and plain structs of rkyv's fixed-endian primitives declared with
//!   `#[rkyv(as = Self)]`;
//! - `Sender<Vec<U>>::loan_slice(n)` for the same `U` (`u8` above all): the sender writes `n`
//!   elements, then appends the 8-byte `ArchivedVec` root that points back at them, so the
//!   receiver reads an ordinary `&ArchivedVec<U>`.
//!
//! The claimed bytes are not cleared: they hold whatever an earlier message left (any bit
//! pattern is a valid `Pod` value). Write all of it.

use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use super::any::AnyGrant;
use super::ends::RingTx;
use bytemuck::Pod;
use rkyv::vec::ArchivedVec;
use rkyv::{Archive, Archived};

use super::error::LoanError;
use super::schema::Format;
use super::{Message, Patience, Sender};

/// Space for one `T` in the ring, written in place; [`send`](Self::send) publishes it.
pub struct Loan<'a, T> {
    grant: AnyGrant<'a>,
    _type: PhantomData<T>,
}

impl<T: Pod> Loan<'_, T> {
    /// Writes `value` into the loan.
    pub fn write(&mut self, value: T) -> &mut Self {
        **self = value;
        self
    }

    /// Publishes the message.
    pub fn send(self) {
        self.grant.commit(size_of::<T>());
    }
}

impl<T: Pod> Deref for Loan<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        bytemuck::from_bytes(&self.grant[..size_of::<T>()])
    }
}

impl<T: Pod> DerefMut for Loan<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        bytemuck::from_bytes_mut(&mut self.grant[..size_of::<T>()])
    }
}

impl<T> fmt::Debug for Loan<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("position", &self.grant.position())
            .field("size", &size_of::<T>())
            .finish()
    }
}

/// Space for `n` elements in the ring, written in place; [`send`](Self::send) appends the
/// `ArchivedVec` root and publishes it.
pub struct SliceLoan<'a, U> {
    grant: AnyGrant<'a>,
    len: usize,
    root: VecRoot,
    _type: PhantomData<U>,
}

impl<U: Pod> SliceLoan<'_, U> {
    /// Publishes the message.
    pub fn send(mut self) {
        let data = self.len * size_of::<U>();
        let root = self.root;
        root.write(&mut self.grant[data..], data, self.len);
        let end = data.next_multiple_of(root.align) + 2 * root.width;
        self.grant.commit(end);
    }
}

impl<U: Pod> Deref for SliceLoan<'_, U> {
    type Target = [U];

    fn deref(&self) -> &[U] {
        bytemuck::cast_slice(&self.grant[..self.len * size_of::<U>()])
    }
}

impl<U: Pod> DerefMut for SliceLoan<'_, U> {
    fn deref_mut(&mut self) -> &mut [U] {
        let len = self.len * size_of::<U>();
        bytemuck::cast_slice_mut(&mut self.grant[..len])
    }
}

impl<U> fmt::Debug for SliceLoan<'_, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SliceLoan")
            .field("position", &self.grant.position())
            .field("len", &self.len)
            .finish()
    }
}

/// The shape of the root of an `ArchivedVec` in this build's rkyv format: a relative pointer
/// and a length, each an integer of the archived pointer width, in the archived endianness.
#[derive(Debug, Clone, Copy)]
struct VecRoot {
    width: usize,
    align: usize,
    little_endian: bool,
}

impl VecRoot {
    fn of<U: Archive>() -> VecRoot {
        let format = Format::current();
        VecRoot {
            width: size_of::<Archived<usize>>(),
            align: align_of::<ArchivedVec<U::Archived>>(),
            little_endian: format.little_endian,
        }
    }

    /// Where the root goes after `data` bytes of elements (`None`: beyond `usize`).
    fn start(&self, data: usize) -> Option<usize> {
        data.checked_next_multiple_of(self.align)
    }

    /// The archive's total length (`None`: beyond `usize`).
    fn end(&self, data: usize) -> Option<usize> {
        self.start(data)?.checked_add(2 * self.width)
    }

    /// Whether the offset and the length fit the pointer width.
    fn fits(&self, data: usize, len: usize) -> bool {
        let bits = 8 * self.width as u32;
        self.start(data)
            .is_some_and(|start| (start as u128) < 1u128 << (bits - 1))
            && (len as u128) < 1u128 << bits
    }

    /// Writes padding and the root into `tail`, the bytes after `data` bytes of elements
    /// (`fits` said yes).
    fn write(&self, tail: &mut [u8], data: usize, len: usize) {
        let start = data.next_multiple_of(self.align);
        let pad = start - data;
        tail[..pad].fill(0);
        // The relative pointer points from itself back to the first element, at 0.
        let offset = (start as i64).wrapping_neg() as u64;
        let (ptr, rest) = tail[pad..].split_at_mut(self.width);
        self.put(ptr, offset);
        self.put(&mut rest[..self.width], len as u64);
    }

    fn put(&self, out: &mut [u8], value: u64) {
        if self.little_endian {
            out.copy_from_slice(&value.to_le_bytes()[..self.width]);
        } else {
            out.copy_from_slice(&value.to_be_bytes()[8 - self.width..]);
        }
    }
}

fn deadline(timeout: Duration) -> Patience {
    Patience::within(timeout)
}

impl<T: Message + Pod + Archive<Archived = T>> Sender<T> {
    /// Claims space for one `T` in the ring, waiting while it is full; write it in place and
    /// [`send`](Loan::send) it.
    ///
    /// # Errors
    ///
    /// [`LoanError::Disconnected`] when the receiver is gone and the ring is full;
    /// `Failed` with `TooLarge`, `SchemaMismatch` or `Corrupt` (see [`Sender::send`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use shmesh::channel::Channel;
    ///
    /// # let name = format!("doc-loan-{}", std::process::id());
    /// let channel = Channel::<[u8; 4096]>::create(&name)?;
    /// let mut tx = channel.sender()?;
    /// let mut rx = channel.receiver()?;
    /// let mut frame = tx.loan()?;
    /// frame.fill(7); // written straight into shared memory
    /// frame.send();
    /// assert!(rx.recv()?.iter().all(|&b| b == 7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn loan(&mut self) -> Result<Loan<'_, T>, LoanError> {
        self.loan_with(Patience::Forever)
    }

    /// Like [`loan`](Self::loan), but never waits.
    ///
    /// # Errors
    ///
    /// [`LoanError::Full`] when the ring has no room now; otherwise as [`loan`](Self::loan).
    pub fn try_loan(&mut self) -> Result<Loan<'_, T>, LoanError> {
        self.loan_with(Patience::Never)
    }

    /// Like [`loan`](Self::loan), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`LoanError::Timeout`]; otherwise as [`loan`](Self::loan).
    pub fn loan_timeout(&mut self, timeout: Duration) -> Result<Loan<'_, T>, LoanError> {
        self.loan_with(deadline(timeout))
    }

    fn loan_with(&mut self, patience: Patience) -> Result<Loan<'_, T>, LoanError> {
        const { assert!(align_of::<T>() <= 16, "ring payloads are 16-byte aligned") };
        let grant = self.claim_loan(size_of::<T>(), patience)?;
        Ok(Loan {
            grant,
            _type: PhantomData,
        })
    }
}

impl<U: Pod + Archive<Archived = U>> Sender<Vec<U>>
where
    Vec<U>: Message,
{
    /// Claims space for `n` elements in the ring, waiting while it is full; write them in
    /// place and [`send`](SliceLoan::send) them. The receiver reads an ordinary
    /// `&ArchivedVec<U>`.
    ///
    /// # Errors
    ///
    /// [`LoanError::Disconnected`] when the receiver is gone and the ring is full;
    /// `Failed` with `TooLarge` (the slice and its 8-byte root do not fit the ring, or `n`
    /// does not fit rkyv's archived `usize`), `SchemaMismatch` or `Corrupt`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmesh::channel::Channel;
    ///
    /// # let name = format!("doc-loan-slice-{}", std::process::id());
    /// let channel = Channel::<Vec<u8>>::create(&name)?;
    /// let mut tx = channel.sender()?;
    /// let mut rx = channel.receiver()?;
    /// let mut image = tx.loan_slice(3 * 64)?;
    /// for (i, byte) in image.iter_mut().enumerate() {
    ///     *byte = i as u8;
    /// }
    /// image.send();
    /// let got = rx.recv()?;
    /// assert_eq!(got.len(), 192);
    /// assert_eq!(got[191], 191);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn loan_slice(&mut self, n: usize) -> Result<SliceLoan<'_, U>, LoanError> {
        self.loan_slice_with(n, Patience::Forever)
    }

    /// Like [`loan_slice`](Self::loan_slice), but never waits.
    ///
    /// # Errors
    ///
    /// [`LoanError::Full`] when the ring has no room now; otherwise as
    /// [`loan_slice`](Self::loan_slice).
    pub fn try_loan_slice(&mut self, n: usize) -> Result<SliceLoan<'_, U>, LoanError> {
        self.loan_slice_with(n, Patience::Never)
    }

    /// Like [`loan_slice`](Self::loan_slice), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`LoanError::Timeout`]; otherwise as [`loan_slice`](Self::loan_slice).
    pub fn loan_slice_timeout(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> Result<SliceLoan<'_, U>, LoanError> {
        self.loan_slice_with(n, deadline(timeout))
    }

    fn loan_slice_with(
        &mut self,
        n: usize,
        patience: Patience,
    ) -> Result<SliceLoan<'_, U>, LoanError> {
        const {
            assert!(align_of::<U>() <= 16, "ring payloads are 16-byte aligned");
            assert!(
                size_of::<U>() > 0,
                "a slice loan of a zero-sized type holds nothing"
            );
        };
        let root = VecRoot::of::<U>();
        let capacity = self.producer.capacity();
        let too_large = |size| LoanError::Failed(super::too_large(size, capacity));
        let Some(data) = n.checked_mul(size_of::<U>()) else {
            return Err(too_large(usize::MAX));
        };
        let Some(end) = root.end(data) else {
            return Err(too_large(usize::MAX));
        };
        if !root.fits(data, n) {
            return Err(too_large(end));
        }
        let grant = self.claim_loan(end, patience)?;
        Ok(SliceLoan {
            grant,
            len: n,
            root,
            _type: PhantomData,
        })
    }
}
