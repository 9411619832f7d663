//! Storage for the weight matrices (f32/f16 panels, int8, bf16): owned, or read in place from
//! bytes another owner keeps (a mapped packed-weight cache file).

use crate::gemm::SharedBytes;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Deref;

/// Element types that any aligned bytes can be read as.
///
/// # Safety
/// Every bit pattern of the type is a value, and it has no padding.
pub(crate) unsafe trait Plain: Copy + Send + Sync + 'static {}
// SAFETY: primitive integers and floats: no padding, every bit pattern a value.
unsafe impl Plain for i8 {}
unsafe impl Plain for u16 {}
unsafe impl Plain for i32 {}
unsafe impl Plain for f32 {}

/// A `[T]` that is either a `Vec` or `len` values at byte `at` of shared bytes.
#[derive(Clone)]
pub(crate) enum Buf<T: Plain> {
    Owned(Vec<T>),
    Shared {
        bytes: Arc<dyn SharedBytes>,
        at: usize,
        len: usize,
    },
}

/// Whether byte `at` of `bytes` sits on an `align`-byte boundary in memory.
pub(crate) fn starts_aligned(bytes: &[u8], at: usize, align: usize) -> bool {
    (bytes.as_ptr() as usize)
        .wrapping_add(at)
        .is_multiple_of(align)
}

impl<T: Plain> Buf<T> {
    /// `len` values at byte `at` of `bytes`, in place; `None` unless they fit inside the buffer
    /// and start aligned for `T` in memory.
    pub(crate) fn shared(bytes: Arc<dyn SharedBytes>, at: usize, len: usize) -> Option<Self> {
        let b = bytes.bytes();
        let end = len
            .checked_mul(core::mem::size_of::<T>())
            .and_then(|n| n.checked_add(at))?;
        (end <= b.len() && starts_aligned(b, at, core::mem::align_of::<T>()))
            .then_some(Buf::Shared { bytes, at, len })
    }

    /// Bytes this buffer owns (none when shared).
    pub(crate) fn held_bytes(&self) -> usize {
        match self {
            Buf::Owned(v) => core::mem::size_of_val(v.as_slice()),
            Buf::Shared { .. } => 0,
        }
    }

    /// Whether the values live in shared bytes.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Buf::Shared { .. })
    }
}

impl<T: Plain> Deref for Buf<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Buf::Owned(v) => v,
            Buf::Shared { bytes, at, len } => {
                let b = &bytes.bytes()[*at..];
                // SAFETY: `shared` checked that `len` values fit from `at` and start aligned
                // for T; every bit pattern is a valid T (`Plain`); `bytes()` returns the same
                // slice on every call and lives as long as the Arc this buffer holds.
                unsafe { core::slice::from_raw_parts(b.as_ptr().cast::<T>(), *len) }
            }
        }
    }
}

impl<T: Plain> core::fmt::Debug for Buf<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Buf::Owned(v) => write!(f, "Owned({} values)", v.len()),
            Buf::Shared { at, len, .. } => write!(f, "Shared({len} values at byte {at})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    struct Bytes(Vec<u8>);
    impl SharedBytes for Bytes {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
    }

    #[test]
    fn shared_reads_in_place_and_refuses_what_does_not_fit() {
        let mut raw = vec![0u8; 64];
        for (i, v) in [1.5f32, -2.0, 3.25].iter().enumerate() {
            raw[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_ne_bytes());
        }
        let bytes: Arc<dyn SharedBytes> = Arc::new(Bytes(raw));
        let base = bytes.bytes().as_ptr() as usize;
        // A Vec<u8> of 64 bytes is at least 4-aligned on every allocator we run on, but check.
        if (base + 8).is_multiple_of(4) {
            let b = Buf::<f32>::shared(Arc::clone(&bytes), 8, 3).unwrap();
            assert_eq!(&*b, &[1.5, -2.0, 3.25]);
            assert!(b.is_shared() && b.held_bytes() == 0);
            assert_eq!(&*b.clone(), &[1.5, -2.0, 3.25]);
            assert!(
                Buf::<f32>::shared(Arc::clone(&bytes), 9, 1).is_none(),
                "misaligned"
            );
        }
        assert!(
            Buf::<f32>::shared(Arc::clone(&bytes), 60, 2).is_none(),
            "past the end"
        );
        assert!(Buf::<i8>::shared(Arc::clone(&bytes), 60, 4).is_some());
        assert!(
            Buf::<i8>::shared(Arc::clone(&bytes), 60, usize::MAX).is_none(),
            "overflow"
        );
        let owned = Buf::Owned(vec![7i32, 8]);
        assert_eq!(&*owned, &[7, 8]);
        assert_eq!(owned.held_bytes(), 8);
    }
}
