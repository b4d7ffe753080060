//! The console ring: the last [`RING_SIZE`] bytes of everything the hypervisor printed or
//! recorded, which the root cell reads back through the management interface
//! (`cellvisor console`).

use crate::budget::RING_WINDOW;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Bytes of console output the root cell can read back: the window over which a cell's share
/// of it is counted ([`crate::budget`]).
pub const RING_SIZE: usize = RING_WINDOW as usize;

/// Everything the console wrote, last [`RING_SIZE`] bytes. Bytes are written lock free; the
/// architecture's console lock orders ordinary output (fatal reports may interleave).
#[derive(Debug)]
pub struct Ring {
    bytes: [AtomicU8; RING_SIZE],
    /// Total bytes ever written.
    head: AtomicU64,
}

impl Ring {
    /// An empty ring.
    pub const fn new() -> Self {
        Self {
            bytes: [const { AtomicU8::new(0) }; RING_SIZE],
            head: AtomicU64::new(0),
        }
    }

    /// Appends one byte.
    pub fn push(&self, byte: u8) {
        let at = self.head.fetch_add(1, Ordering::Relaxed);
        self.bytes[(at % RING_SIZE as u64) as usize].store(byte, Ordering::Relaxed);
    }

    /// Bytes written so far (the position after the last one).
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Copies output from position `from` into `out`; returns the bytes copied and the oldest
    /// position still in the ring (a reader behind it lost output).
    pub fn read(&self, from: u64, out: &mut [u8]) -> (usize, u64) {
        let head = self.head();
        let oldest = head.saturating_sub(RING_SIZE as u64);
        let start = from.max(oldest);
        let count = (head.saturating_sub(start) as usize).min(out.len());
        for (i, slot) in out.iter_mut().take(count).enumerate() {
            *slot = self.bytes[((start + i as u64) % RING_SIZE as u64) as usize]
                .load(Ordering::Relaxed);
        }
        (count, oldest)
    }
}

impl Default for Ring {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Write for &Ring {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        text.bytes().for_each(|b| self.push(b));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn keeps_the_last_bytes_and_says_what_was_lost() {
        let ring = std::boxed::Box::new(Ring::new());
        let mut writer = &*ring;
        write!(writer, "hello").unwrap();
        let mut out = [0u8; 16];
        assert_eq!(ring.read(0, &mut out), (5, 0));
        assert_eq!(&out[..5], b"hello");
        assert_eq!(ring.read(3, &mut out), (2, 0));
        assert_eq!(&out[..2], b"lo");
        for i in 0..RING_SIZE {
            ring.push(b'a' + (i % 26) as u8);
        }
        let head = ring.head();
        assert_eq!(head, 5 + RING_SIZE as u64);
        let (copied, oldest) = ring.read(0, &mut out);
        assert_eq!((copied, oldest), (16, 5), "the first five bytes are gone");
        assert_eq!(&out[..3], b"abc");
        assert_eq!(ring.read(head, &mut out), (0, 5));
    }
}
