//! How the engine reaches memory: a frame allocator for new tables and an accessor for the
//! descriptors inside table frames.
//!
//! The engine never dereferences a physical address itself. In the hypervisor,
//! [`LinearMemory`] reaches frames through a fixed offset (identity or linear map); on the host,
//! the `fake` feature provides an in-memory fake so the engine can be tested, fuzzed and
//! benchmarked without hardware.

use crate::addr::PhysAddr;

/// Number of 64-bit descriptors in one 4 KiB table frame.
pub const ENTRIES_PER_TABLE: usize = 512;

/// One raw 64-bit translation-table descriptor, as stored in memory.
///
/// Only the format modules interpret the bits; the engine passes descriptors around opaquely.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Descriptor(u64);

impl Descriptor {
    /// The all-zero descriptor, invalid in every supported format.
    pub const INVALID: Self = Self(0);

    /// A descriptor from its raw bits.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

impl core::fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Descriptor({:#018x})", self.0)
    }
}

/// Hands out and takes back 4 KiB table frames.
pub trait FrameAllocator {
    /// Allocates `count` physically contiguous frames whose base is aligned to
    /// `count * 4 KiB`. `count` is a power of two from 1 to 16 (16 only for concatenated Arm
    /// stage-2 root tables). Returns `None` when memory is exhausted. The content of the frames
    /// does not matter: the engine clears them.
    fn allocate_frames(&mut self, count: usize) -> Option<PhysAddr>;

    /// Returns frames obtained from [`allocate_frames`](Self::allocate_frames) with the same
    /// `count`.
    fn deallocate_frames(&mut self, base: PhysAddr, count: usize);
}

/// Reads and writes descriptors inside table frames.
///
/// Implementations must make each write a single 64-bit store (hardware walkers may read the
/// table concurrently) and must not reorder writes to the same table.
pub trait PhysMemory {
    /// Reads descriptor `index` of the table frame(s) at `table`.
    fn read_descriptor(&self, table: PhysAddr, index: usize) -> Descriptor;

    /// Writes descriptor `index` of the table frame(s) at `table`.
    fn write_descriptor(&mut self, table: PhysAddr, index: usize, value: Descriptor);

    /// Clears `frames` frames starting at `base`.
    fn zero_frames(&mut self, base: PhysAddr, frames: usize) {
        for index in 0..frames * ENTRIES_PER_TABLE {
            self.write_descriptor(base, index, Descriptor::INVALID);
        }
    }
}

/// Physical memory reached at a constant offset from its physical address: the identity map
/// (offset 0) or a linear map of RAM, as hypervisors usually have.
#[derive(Debug)]
pub struct LinearMemory {
    offset: u64,
}

impl LinearMemory {
    /// Reaches physical address `pa` at virtual address `pa + offset` (wrapping).
    ///
    /// # Safety
    ///
    /// For as long as the returned value is used, every table frame the engine is given or
    /// allocates (the frame allocator's frames and every table reachable from a root used with
    /// this accessor) must be mapped read-write at `pa + offset`, and must be used by nothing
    /// but the translation tables.
    pub const unsafe fn new(offset: u64) -> Self {
        Self { offset }
    }

    fn slot(&self, table: PhysAddr, index: usize) -> *mut u64 {
        table
            .as_u64()
            .wrapping_add(self.offset)
            .wrapping_add(index as u64 * 8) as usize as *mut u64
    }
}

impl PhysMemory for LinearMemory {
    fn read_descriptor(&self, table: PhysAddr, index: usize) -> Descriptor {
        // SAFETY: `LinearMemory::new`'s contract makes every table frame the engine uses
        // reachable and exclusively ours at `pa + offset`; the engine only passes indices
        // inside the table (the root may span several concatenated frames). A volatile read
        // because hardware walkers may update access bits.
        Descriptor(unsafe { self.slot(table, index).read_volatile() })
    }

    fn write_descriptor(&mut self, table: PhysAddr, index: usize, value: Descriptor) {
        // SAFETY: as for `read_descriptor`. A single aligned volatile 64-bit store, so a
        // concurrent hardware walk sees either the old or the new descriptor, never a mix.
        unsafe { self.slot(table, index).write_volatile(value.0) }
    }
}

impl<T: FrameAllocator + ?Sized> FrameAllocator for &mut T {
    fn allocate_frames(&mut self, count: usize) -> Option<PhysAddr> {
        (**self).allocate_frames(count)
    }

    fn deallocate_frames(&mut self, base: PhysAddr, count: usize) {
        (**self).deallocate_frames(base, count)
    }
}

impl<T: PhysMemory + ?Sized> PhysMemory for &mut T {
    fn read_descriptor(&self, table: PhysAddr, index: usize) -> Descriptor {
        (**self).read_descriptor(table, index)
    }

    fn write_descriptor(&mut self, table: PhysAddr, index: usize, value: Descriptor) {
        (**self).write_descriptor(table, index, value)
    }

    fn zero_frames(&mut self, base: PhysAddr, frames: usize) {
        (**self).zero_frames(base, frames)
    }
}

/// A frame allocator and a memory accessor combined into what [`PageTable`] operations
/// take, e.g. `TableMemory { frames: &mut pool, memory: LinearMemory::new(offset) }`.
///
/// [`PageTable`]: crate::PageTable
#[derive(Debug)]
pub struct TableMemory<A, M> {
    /// Where new table frames come from and freed ones go.
    pub frames: A,
    /// How descriptors are read and written.
    pub memory: M,
}

impl<A: FrameAllocator, M> FrameAllocator for TableMemory<A, M> {
    fn allocate_frames(&mut self, count: usize) -> Option<PhysAddr> {
        self.frames.allocate_frames(count)
    }

    fn deallocate_frames(&mut self, base: PhysAddr, count: usize) {
        self.frames.deallocate_frames(base, count)
    }
}

impl<A, M: PhysMemory> PhysMemory for TableMemory<A, M> {
    fn read_descriptor(&self, table: PhysAddr, index: usize) -> Descriptor {
        self.memory.read_descriptor(table, index)
    }

    fn write_descriptor(&mut self, table: PhysAddr, index: usize, value: Descriptor) {
        self.memory.write_descriptor(table, index, value)
    }

    fn zero_frames(&mut self, base: PhysAddr, frames: usize) {
        self.memory.zero_frames(base, frames)
    }
}
