//! A fixed pool of 4 KiB frames for translation tables: the [`FrameAllocator`] a hypervisor
//! uses before (or instead of) any heap.
//!
//! A hypervisor needs table frames before any allocator exists (its own map, the first
//! cell's tables); they come from a statically reserved, page-aligned range. The pool only
//! tracks which frames are in use; the memory itself is reached through a [`PhysMemory`]
//! such as [`LinearMemory`].
//!
//! [`PhysMemory`]: crate::PhysMemory
//! [`LinearMemory`]: crate::LinearMemory

use crate::{FrameAllocator, PhysAddr, PAGE_SIZE};

/// `N` consecutive frames starting at `base`, allocated first-fit with natural alignment.
#[derive(Debug)]
pub struct FramePool<const N: usize> {
    base: PhysAddr,
    /// Frames that exist (at most `N`).
    count: usize,
    used: [bool; N],
    /// Length of the allocation starting at each frame (0: none starts there).
    lengths: [u8; N],
}

impl<const N: usize> FramePool<N> {
    /// A pool of the `N` frames at `base` (4 KiB aligned; the caller reserves the memory).
    pub const fn new(base: PhysAddr) -> Self {
        Self::with_frames(base, N)
    }

    /// A pool of the first `count` (at most `N`) frames at `base`.
    pub const fn with_frames(base: PhysAddr, count: usize) -> Self {
        Self {
            base,
            count: if count < N { count } else { N },
            used: [false; N],
            lengths: [0; N],
        }
    }

    /// Frames currently allocated.
    pub fn in_use(&self) -> usize {
        self.used.iter().filter(|&&u| u).count()
    }
}

impl<const N: usize> FrameAllocator for FramePool<N> {
    fn allocate_frames(&mut self, count: usize) -> Option<PhysAddr> {
        if count == 0 || !count.is_power_of_two() {
            return None;
        }
        let base_frame = self.base.as_u64() / PAGE_SIZE;
        // Natural alignment of the physical address, not of the index.
        let first = (0..self.count).find(|&i| {
            (base_frame + i as u64).is_multiple_of(count as u64)
                && i + count <= self.count
                && self.used[i..i + count].iter().all(|&u| !u)
        })?;
        self.used[first..first + count].fill(true);
        self.lengths[first] = count as u8;
        Some(PhysAddr::new(self.base.as_u64() + first as u64 * PAGE_SIZE))
    }

    fn deallocate_frames(&mut self, base: PhysAddr, count: usize) {
        let Some(offset) = base.as_u64().checked_sub(self.base.as_u64()) else {
            return;
        };
        let index = (offset / PAGE_SIZE) as usize;
        // Frames that are not ours, or a wrong count, are ignored rather than corrupting
        // the bookkeeping.
        if index < self.count && self.lengths[index] as usize == count {
            self.lengths[index] = 0;
            self.used[index..index + count].fill(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_aligned_and_reuses() {
        let mut pool = FramePool::<8>::new(PhysAddr::new(0x4000_1000));
        let a = pool.allocate_frames(1).unwrap();
        assert_eq!(a, PhysAddr::new(0x4000_1000));
        // Two frames aligned to 8 KiB: 0x4000_2000 is free and aligned.
        let b = pool.allocate_frames(2).unwrap();
        assert_eq!(b, PhysAddr::new(0x4000_2000));
        let c = pool.allocate_frames(4).unwrap();
        assert_eq!(c, PhysAddr::new(0x4000_4000));
        assert_eq!(pool.in_use(), 7);
        assert_eq!(pool.allocate_frames(2), None, "no aligned pair left");
        pool.deallocate_frames(b, 2);
        assert_eq!(pool.allocate_frames(1), Some(b));
        assert_eq!(pool.allocate_frames(3), None, "not a power of two");
    }

    #[test]
    fn a_limited_pool_stays_inside_its_frames() {
        let mut pool = FramePool::<8>::with_frames(PhysAddr::new(0x1000), 3);
        assert!(pool.allocate_frames(1).is_some());
        assert!(pool.allocate_frames(2).is_some());
        assert_eq!(pool.allocate_frames(1), None, "only 3 frames exist");
        assert_eq!(pool.in_use(), 3);
    }

    #[test]
    fn ignores_foreign_frees() {
        let mut pool = FramePool::<2>::new(PhysAddr::new(0x1000));
        let a = pool.allocate_frames(1).unwrap();
        pool.deallocate_frames(PhysAddr::new(0x9000), 1);
        pool.deallocate_frames(a, 2);
        assert_eq!(pool.in_use(), 1);
    }
}
