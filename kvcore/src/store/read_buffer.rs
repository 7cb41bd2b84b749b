//! Copies of stored values for readers, cut from a per-thread buffer so a read does not allocate.
//!
//! A read returns the value as [`Bytes`] the caller owns, so the bytes must leave the arena.
//! Allocating a buffer per read costs more than the rest of the read together; instead each
//! thread copies small values into its own 8 KiB buffer and hands out slices of it, which share
//! the buffer's reference count. Once every slice of a full buffer is dropped, the buffer is
//! reused; while one is alive, the next copies go to a new buffer. So a small value that a caller
//! keeps for long keeps up to 8 KiB alive with it.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// Values up to this size are cut from the shared buffer; larger ones get an allocation of their
/// own, which costs little next to copying them and pins no other bytes.
const SHARED_MAX: usize = 256;

/// Size of one buffer.
const BUFFER_SIZE: usize = 8 << 10;

thread_local! {
    static BUFFER: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A copy of `bytes` that the caller owns.
#[inline]
pub(super) fn copy_out(bytes: &[u8]) -> Bytes {
    if bytes.is_empty() || bytes.len() > SHARED_MAX {
        return Bytes::copy_from_slice(bytes);
    }
    BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        if buffer.capacity() < bytes.len() {
            // Reclaims the buffer if no slice of it is alive, else starts a new one.
            buffer.reserve(BUFFER_SIZE);
        }
        buffer.extend_from_slice(bytes);
        buffer.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_independent_of_each_other_and_of_the_source() {
        let mut source = vec![1u8; 100];
        let a = copy_out(&source);
        source.fill(2);
        let b = copy_out(&source);
        let big = copy_out(&[3; SHARED_MAX + 1]);
        assert_eq!((&a[..], &b[..]), (&[1; 100][..], &[2; 100][..]));
        assert_eq!(&big[..], &[3; SHARED_MAX + 1][..]);
        assert!(copy_out(&[]).is_empty());
    }

    #[test]
    fn copies_survive_the_buffer_filling_up_and_being_reused() {
        let kept: Vec<Bytes> = (0..200u8).map(|i| copy_out(&[i; 200])).collect();
        // Many short-lived copies: the buffer is recycled under the ones kept above.
        for i in 0..10_000u32 {
            let c = copy_out(&i.to_le_bytes());
            assert_eq!(&c[..], &i.to_le_bytes());
        }
        for (i, k) in kept.iter().enumerate() {
            assert_eq!(&k[..], &[i as u8; 200][..]);
        }
        let other = std::thread::spawn(|| copy_out(b"from another thread"));
        assert_eq!(&other.join().unwrap()[..], b"from another thread");
    }
}
