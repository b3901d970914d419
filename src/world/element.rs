//! Numeric elements of the collectives' buffers, and the built-in reductions.

/// A numeric type the collectives move and reduce: the primitive integers and floats.
///
/// Integer sums and products wrap on overflow (as in release builds); float `Min`/`Max` treat
/// NaN as "not smaller/larger" (a NaN operand loses unless both are NaN).
pub trait Element: bytemuck::Pod + PartialOrd + Send + Sync + 'static {
    /// `a + b`.
    fn add(a: Self, b: Self) -> Self;
    /// `a * b`.
    fn mul(a: Self, b: Self) -> Self;
}

macro_rules! int_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            #[inline]
            fn add(a: Self, b: Self) -> Self {
                a.wrapping_add(b)
            }
            #[inline]
            fn mul(a: Self, b: Self) -> Self {
                a.wrapping_mul(b)
            }
        }
    )*};
}

macro_rules! float_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            #[inline]
            fn add(a: Self, b: Self) -> Self {
                a + b
            }
            #[inline]
            fn mul(a: Self, b: Self) -> Self {
                a * b
            }
        }
    )*};
}

int_element!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize);
float_element!(f32, f64);

/// The smaller of two elements; a NaN loses to a number, whichever side it is on.
#[inline]
#[allow(clippy::eq_op)] // `a != a` is the NaN test, for any `PartialOrd` element
pub(crate) fn min<E: Element>(a: E, b: E) -> E {
    if b < a || a != a {
        b
    } else {
        a
    }
}

/// The larger of two elements; a NaN loses to a number, whichever side it is on.
#[inline]
#[allow(clippy::eq_op)]
pub(crate) fn max<E: Element>(a: E, b: E) -> E {
    if b > a || a != a {
        b
    } else {
        a
    }
}

/// A built-in reduction of [`World::reduce`](super::World::reduce) and
/// [`World::all_reduce`](super::World::all_reduce), applied element by element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The sum (integers wrap).
    Sum,
    /// The product (integers wrap).
    Product,
    /// The smallest.
    Min,
    /// The largest.
    Max,
}

impl Op {
    /// Combines `b` into `a`: `a[i] = a[i] op b[i]`.
    #[inline]
    pub fn combine<E: Element>(self, a: &mut [E], b: &[E]) {
        debug_assert_eq!(a.len(), b.len());
        match self {
            Op::Sum => a.iter_mut().zip(b).for_each(|(x, &y)| *x = E::add(*x, y)),
            Op::Product => a.iter_mut().zip(b).for_each(|(x, &y)| *x = E::mul(*x, y)),
            Op::Min => a.iter_mut().zip(b).for_each(|(x, &y)| *x = min(*x, y)),
            Op::Max => a.iter_mut().zip(b).for_each(|(x, &y)| *x = max(*x, y)),
        }
    }

    /// The operation on one pair, for sequential references.
    pub fn apply<E: Element>(self, a: E, b: E) -> E {
        let mut x = [a];
        self.combine(&mut x, &[b]);
        x[0]
    }
}

/// Reinterprets received bytes as elements: in place when they are aligned (ring payloads and
/// buffers are 16-byte aligned, and fragments are cut at multiples of 64 bytes), otherwise
/// through `scratch`.
pub(crate) fn elements<'a, E: Element>(bytes: &'a [u8], scratch: &'a mut Vec<E>) -> &'a [E] {
    match bytemuck::try_cast_slice(bytes) {
        Ok(slice) => slice,
        Err(_) => {
            scratch.clear();
            scratch.extend(
                bytes
                    .chunks_exact(std::mem::size_of::<E>())
                    .map(bytemuck::pod_read_unaligned::<E>),
            );
            scratch
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_combine_element_by_element() {
        let mut a = [1i32, 5, -3];
        Op::Sum.combine(&mut a, &[2, 2, 2]);
        assert_eq!(a, [3, 7, -1]);
        Op::Max.combine(&mut a, &[4, 0, 0]);
        assert_eq!(a, [4, 7, 0]);
        Op::Min.combine(&mut a, &[5, 1, -9]);
        assert_eq!(a, [4, 1, -9]);
        Op::Product.combine(&mut a, &[2, 3, 0]);
        assert_eq!(a, [8, 3, 0]);
        let mut f = [f64::NAN, 1.0];
        Op::Min.combine(&mut f, &[2.0, f64::NAN]);
        assert_eq!(f, [2.0, 1.0], "a NaN loses on either side");
        let mut w = [u8::MAX];
        Op::Sum.combine(&mut w, &[2]);
        assert_eq!(w, [1], "integers wrap");
    }

    #[test]
    fn misaligned_bytes_are_copied() {
        let data: Vec<u8> = (0..17).collect();
        let mut scratch = Vec::new();
        let view = elements::<u32>(&data[1..17], &mut scratch);
        assert_eq!(view.len(), 4);
        assert_eq!(view[0], u32::from_ne_bytes([1, 2, 3, 4]));
    }
}
