//! An in-memory fake of physical memory and a frame allocator, for host tests, fuzzing and
//! benchmarks (feature `fake`).
//!
//! It is strict on purpose: reading or writing a frame that is not allocated, freeing a frame
//! twice, or freeing with the wrong count panics, so engine bugs such as use-after-free show up
//! as test failures. Writes can be logged to check break-before-make ordering.

use crate::addr::{Address, PhysAddr};
use crate::attr::Attributes;
use crate::memory::{Descriptor, FrameAllocator, PhysMemory, ENTRIES_PER_TABLE};
use crate::tlb::{Stale, TlbInvalidate};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

type Frame = [u64; ENTRIES_PER_TABLE];

/// One recorded event: a descriptor write or a TLB invalidation, in program order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// A descriptor write.
    Write {
        /// The table frame written.
        table: PhysAddr,
        /// The descriptor index.
        index: usize,
        /// The value before.
        old: Descriptor,
        /// The value written.
        new: Descriptor,
    },
    /// A call of the TLB hook (input address as a raw value).
    Invalidate {
        /// First input address.
        start: u64,
        /// Size in bytes.
        size: u64,
        /// What became stale.
        stale: Stale,
    },
}

/// Where [`FakeMemory`] and [`FakeTlb`] record events while recording is on.
type EventLog = Rc<RefCell<Option<Vec<Event>>>>;

/// A TLB hook that records its calls in the event log of the [`FakeMemory`] that made it.
#[derive(Debug, Clone)]
pub struct FakeTlb {
    log: EventLog,
}

impl<A: Address> TlbInvalidate<A> for FakeTlb {
    fn invalidate(&mut self, start: A, size: u64, stale: Stale) {
        if let Some(log) = self.log.borrow_mut().as_mut() {
            log.push(Event::Invalidate {
                start: start.as_u64(),
                size,
                stale,
            });
        }
    }
}

/// Fake physical memory: `capacity` frames starting at `base`.
#[derive(Debug, Clone)]
pub struct FakeMemory {
    base: u64,
    frames: Vec<Option<Box<Frame>>>,
    /// Start (in frames) of each live allocation, with its length; 0 for frames that start
    /// none.
    allocation_len: Vec<u8>,
    allocated: Vec<bool>,
    in_use: usize,
    limit: usize,
    /// Frames never handed out yet start at this index.
    bump: usize,
    /// Single frames given back, reused first.
    free_singles: Vec<usize>,
    log: EventLog,
    allocations: u64,
}

impl FakeMemory {
    /// A fake with `capacity` frames, the first at physical address `base` (4 KiB aligned).
    pub fn new(base: PhysAddr, capacity: usize) -> Self {
        assert!(
            base.is_aligned(4096),
            "fake memory base must be page aligned"
        );
        Self {
            base: base.as_u64(),
            frames: vec![None; capacity],
            allocation_len: vec![0; capacity],
            allocated: vec![false; capacity],
            in_use: 0,
            limit: capacity,
            bump: 0,
            free_singles: Vec::new(),
            log: Rc::new(RefCell::new(None)),
            allocations: 0,
        }
    }

    /// Makes allocations fail once `frames` frames are in use (to test exhaustion).
    pub fn set_limit(&mut self, frames: usize) {
        self.limit = frames;
    }

    /// Frames currently allocated.
    pub fn frames_in_use(&self) -> usize {
        self.in_use
    }

    /// Successful allocation calls so far.
    pub fn allocation_count(&self) -> u64 {
        self.allocations
    }

    /// A TLB hook recording into this memory's event log.
    pub fn tlb(&self) -> FakeTlb {
        FakeTlb {
            log: self.log.clone(),
        }
    }

    /// Starts (or restarts) recording descriptor writes and TLB invalidations.
    pub fn start_recording(&mut self) {
        *self.log.borrow_mut() = Some(Vec::new());
    }

    /// The events recorded since [`start_recording`](Self::start_recording); recording stops.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.log.borrow_mut().take().unwrap_or_default()
    }

    /// The allocated frames and their contents, for comparing states.
    pub fn snapshot(&self) -> Vec<(PhysAddr, Frame)> {
        (0..self.frames.len())
            .filter(|&i| self.allocated[i])
            .map(|i| {
                let content = self.frames[i].as_deref().copied().unwrap_or([0; 512]);
                (self.address(i), content)
            })
            .collect()
    }

    fn address(&self, frame: usize) -> PhysAddr {
        PhysAddr::new(self.base + frame as u64 * 4096)
    }

    fn slot(&self, table: PhysAddr, index: usize) -> (usize, usize) {
        let offset = table.as_u64().wrapping_sub(self.base) + index as u64 * 8;
        let frame = (offset / 4096) as usize;
        assert!(
            table.as_u64() >= self.base && frame < self.frames.len() && self.allocated[frame],
            "access to {table} index {index}: not an allocated frame"
        );
        (frame, (offset % 4096 / 8) as usize)
    }
}

impl FrameAllocator for FakeMemory {
    fn allocate_frames(&mut self, count: usize) -> Option<PhysAddr> {
        assert!(
            count.is_power_of_two() && count <= 16,
            "bad frame count {count}"
        );
        if self.in_use + count > self.limit {
            return None;
        }
        let start = if count == 1 && !self.free_singles.is_empty() {
            self.free_singles.pop()?
        } else {
            let first = self.bump.next_multiple_of(count);
            if first + count > self.frames.len() {
                return None;
            }
            // Frames skipped for alignment become free singles.
            self.free_singles.extend(self.bump..first);
            self.bump = first + count;
            first
        };
        for frame in start..start + count {
            debug_assert!(!self.allocated[frame]);
            self.allocated[frame] = true;
        }
        self.allocation_len[start] = count as u8;
        self.in_use += count;
        self.allocations += 1;
        Some(self.address(start))
    }

    fn deallocate_frames(&mut self, base: PhysAddr, count: usize) {
        let (start, _) = self.slot(base, 0);
        assert_eq!(
            self.allocation_len[start] as usize, count,
            "freeing {base} with count {count}: not an allocation of that size"
        );
        self.allocation_len[start] = 0;
        for frame in start..start + count {
            self.allocated[frame] = false;
            self.frames[frame] = None;
            self.free_singles.push(frame);
        }
        self.in_use -= count;
    }
}

impl PhysMemory for FakeMemory {
    fn read_descriptor(&self, table: PhysAddr, index: usize) -> Descriptor {
        let (frame, slot) = self.slot(table, index);
        Descriptor::from_bits(self.frames[frame].as_ref().map_or(0, |f| f[slot]))
    }

    fn write_descriptor(&mut self, table: PhysAddr, index: usize, value: Descriptor) {
        let (frame, slot) = self.slot(table, index);
        let content = self.frames[frame].get_or_insert_with(|| Box::new([0; 512]));
        let old = Descriptor::from_bits(content[slot]);
        content[slot] = value.bits();
        if let Some(log) = self.log.borrow_mut().as_mut() {
            log.push(Event::Write {
                table,
                index,
                old,
                new: value,
            });
        }
    }

    fn zero_frames(&mut self, base: PhysAddr, frames: usize) {
        for frame in 0..frames {
            let (index, _) = self.slot(PhysAddr::new(base.as_u64() + frame as u64 * 4096), 0);
            self.frames[index] = None;
        }
    }
}

/// Checks break-before-make in recorded events: a valid descriptor is never overwritten by a
/// different valid one, and a descriptor made invalid is not made valid again before a TLB
/// invalidation. All supported formats encode "invalid" as zero here.
pub fn check_break_before_make(events: &[Event]) -> Result<(), String> {
    let mut broken: Vec<(PhysAddr, usize)> = Vec::new();
    for event in events {
        match *event {
            Event::Invalidate { .. } => broken.clear(),
            Event::Write {
                table,
                index,
                old,
                new,
            } => {
                let (was_valid, is_valid) = (old.bits() != 0, new.bits() != 0);
                if was_valid && is_valid && old != new {
                    return Err(format!(
                        "{table} index {index}: {old:?} replaced by {new:?} without a break"
                    ));
                }
                if was_valid && !is_valid {
                    broken.push((table, index));
                } else if is_valid && broken.contains(&(table, index)) {
                    return Err(format!(
                        "{table} index {index}: made valid again ({new:?}) before the TLB \
                         was invalidated"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A reference model of a translation: a set of non-overlapping intervals of input
/// addresses, each mapped linearly to output addresses with one set of attributes. It is as
/// simple as possible so that it can be trusted to judge the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// start -> (end, output of start, attributes)
    intervals: BTreeMap<u64, (u64, u64, Attributes)>,
}

/// One interval of a [`Model`]: `[start, end)` maps to `output..` with `attributes`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Interval {
    /// First input address.
    pub start: u64,
    /// One past the last input address.
    pub end: u64,
    /// Output address of `start`.
    pub output: u64,
    /// Attributes.
    pub attributes: Attributes,
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes `[start, end)`, keeping the parts of intervals outside it.
    pub fn unmap(&mut self, start: u64, end: u64) {
        let overlapping: Vec<Interval> = self.overlapping(start, end).collect();
        for piece in overlapping {
            self.intervals.remove(&piece.start);
            if piece.start < start {
                self.intervals
                    .insert(piece.start, (start, piece.output, piece.attributes));
            }
            if piece.end > end {
                let output = piece.output + (end - piece.start);
                self.intervals
                    .insert(end, (piece.end, output, piece.attributes));
            }
        }
    }

    /// Maps `[start, end)` to `output..`, replacing whatever was there.
    pub fn map(&mut self, start: u64, end: u64, output: u64, attributes: Attributes) {
        self.unmap(start, end);
        self.intervals.insert(start, (end, output, attributes));
    }

    /// Sets the attributes of every mapped part of `[start, end)`.
    pub fn protect(&mut self, start: u64, end: u64, attributes: Attributes) {
        let pieces: Vec<Interval> = self.overlapping(start, end).collect();
        for piece in pieces {
            let from = piece.start.max(start);
            let to = piece.end.min(end);
            let output = piece.output + (from - piece.start);
            self.map(from, to, output, attributes);
        }
    }

    /// The intervals overlapping `[start, end)`, unclipped, in order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = Interval> + '_ {
        let first = self
            .intervals
            .range(..=start)
            .next_back()
            .filter(|(_, (e, _, _))| *e > start)
            .map(|(s, _)| *s)
            .unwrap_or(start);
        self.intervals
            .range(first..end)
            .map(|(&start, &(end, output, attributes))| Interval {
                start,
                end,
                output,
                attributes,
            })
    }

    /// Output and attributes of `address`.
    pub fn translate(&self, address: u64) -> Option<(u64, Attributes)> {
        let (start, (end, output, attributes)) = self.intervals.range(..=address).next_back()?;
        (address < *end).then(|| (output + (address - start), *attributes))
    }

    /// The first mapped address in `[start, end)`.
    pub fn first_mapped(&self, start: u64, end: u64) -> Option<u64> {
        self.overlapping(start, end)
            .next()
            .map(|i| i.start.max(start))
    }

    /// The first unmapped address in `[start, end)`.
    pub fn first_unmapped(&self, start: u64, end: u64) -> Option<u64> {
        let mut at = start;
        for piece in self.overlapping(start, end) {
            if piece.start > at {
                return Some(at);
            }
            at = piece.end;
        }
        (at < end).then_some(at)
    }

    /// The intervals with neighbours merged where they continue each other (adjacent inputs,
    /// contiguous outputs, same attributes): a canonical form to compare against.
    pub fn merged(&self) -> Vec<Interval> {
        merge(self.overlapping(0, u64::MAX))
    }
}

/// Merges adjacent intervals that continue each other; the input must be sorted.
pub fn merge(intervals: impl IntoIterator<Item = Interval>) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    for next in intervals {
        if let Some(last) = out.last_mut() {
            if last.end == next.start
                && last.output + (last.end - last.start) == next.output
                && last.attributes == next.attributes
            {
                last.end = next.end;
                continue;
            }
        }
        out.push(next);
    }
    out
}
