//! The page-table engine: one tree of translation tables in one [`Format`].

use crate::addr::{Address, PhysAddr, PAGE_SIZE};
use crate::attr::Attributes;
use crate::error::{Error, Location, Operation, Reason};
use crate::format::{Entry, Format, Level};
use crate::memory::{Descriptor, FrameAllocator, PhysMemory, ENTRIES_PER_TABLE};
use crate::tlb::{Stale, TlbInvalidate};

/// A contiguous mapping: `size` bytes from `input` to `output` with `attributes`.
///
/// Used both to ask for a mapping and to report the leaves found in a tree.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mapping<A> {
    /// First input address.
    pub input: A,
    /// First output address.
    pub output: PhysAddr,
    /// Size in bytes, a multiple of 4 KiB.
    pub size: u64,
    /// What the mapping allows.
    pub attributes: Attributes,
}

/// What [`PageTable::map`] does with parts of the range that are already mapped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapMode {
    /// Fail with [`Reason::AlreadyMapped`] if any page of the range is mapped.
    New,
    /// Overwrite existing mappings.
    Replace,
}

/// The result of translating one address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Translation {
    /// Where the address goes.
    pub output: PhysAddr,
    /// What the mapping allows.
    pub attributes: Attributes,
    /// Size of the page or block that maps the address.
    pub size: u64,
    /// Level of the leaf descriptor.
    pub level: Level,
}

/// Table and leaf counts of a tree, per level.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Stats {
    /// Table frames in use, including the root (all concatenated root frames count).
    pub frames: usize,
    /// Tables per level (the root counts once at the start level).
    pub tables: [usize; 4],
    /// Leaf descriptors per level (index 3: 4 KiB pages).
    pub leaves: [usize; 4],
    /// Tables that hold no valid descriptor (never left behind by this engine).
    pub empty_tables: usize,
}

/// One tree of translation tables.
///
/// The tree owns its frames; [`destroy`](Self::destroy) returns them. The memory accessor,
/// the frame allocator and the TLB hook are passed to each operation so that one allocator can
/// serve many trees (one per cell).
///
/// Every operation either succeeds or leaves the tree exactly as it was: the range and the
/// attributes are checked first, then a dry run finds conflicts and counts the table frames
/// the change needs, and only when those frames are allocated does the tree change.
///
/// The tree is kept canonical: a range that is uniformly mapped with suitable alignment is
/// one block, and tables that become empty or uniform are freed.
#[derive(Debug)]
pub struct PageTable<F: Format> {
    format: F,
    root: PhysAddr,
}

/// A range in the format's linear input-offset space, `[start, end)`.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u64,
    end: u64,
}

/// The change an operation makes to every page of its span.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// Map the span to `output` (the physical address of `span.start`).
    Map {
        output: u64,
        attributes: Attributes,
        replace: bool,
    },
    /// Remove every mapping.
    Unmap,
    /// Keep the output, change the attributes.
    Protect { attributes: Attributes },
}

/// A table as the dry run sees it: a real table in memory, or one the operation would
/// create, whose entries are all the same (invalid, or the pieces of a split block).
#[derive(Clone, Copy, Debug)]
enum Node {
    Real(PhysAddr),
    Virtual(Uniform),
}

#[derive(Clone, Copy, Debug)]
enum Uniform {
    Invalid,
    Leaf { output: u64, attributes: Attributes },
}

/// Dry run or the real change.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pass {
    Count,
    Apply,
}

/// Frames allocated before a change, chained through their first descriptor so that no
/// other storage is needed.
#[derive(Debug)]
struct Reserve {
    head: PhysAddr,
    count: usize,
}

impl Reserve {
    const EMPTY: Reserve = Reserve {
        head: PhysAddr::new(0),
        count: 0,
    };

    fn fill<M: FrameAllocator + PhysMemory>(mem: &mut M, frames: usize) -> Option<Reserve> {
        let mut reserve = Reserve::EMPTY;
        while reserve.count < frames {
            let Some(frame) = mem.allocate_frames(1) else {
                reserve.release(mem);
                return None;
            };
            mem.write_descriptor(frame, 0, Descriptor::from_bits(reserve.head.as_u64()));
            reserve.head = frame;
            reserve.count += 1;
        }
        Some(reserve)
    }

    /// A cleared frame from the reserve.
    fn take<M: PhysMemory>(&mut self, mem: &mut M) -> Option<PhysAddr> {
        if self.count == 0 {
            return None;
        }
        let frame = self.head;
        self.head = PhysAddr::new(mem.read_descriptor(frame, 0).bits());
        self.count -= 1;
        mem.zero_frames(frame, 1);
        Some(frame)
    }

    fn release<M: FrameAllocator + PhysMemory>(mut self, mem: &mut M) {
        while self.count > 0 {
            let frame = self.head;
            self.head = PhysAddr::new(mem.read_descriptor(frame, 0).bits());
            self.count -= 1;
            mem.deallocate_frames(frame, 1);
        }
    }
}

/// The state of one operation walking the tree.
struct Walk<'a, F: Format, M, T> {
    format: &'a F,
    mem: &'a mut M,
    tlb: &'a mut T,
    span: Span,
    change: Change,
    pass: Pass,
    /// Frames the dry run found necessary.
    needed: usize,
    reserve: Reserve,
}

/// A failure found while walking: the input offset it is about and why.
type WalkError = (u64, Reason);

impl<F: Format> PageTable<F> {
    /// An empty tree: allocates and clears the root table (several concatenated frames for
    /// some Arm stage-2 input sizes).
    pub fn new<M: FrameAllocator + PhysMemory>(format: F, mem: &mut M) -> Result<Self, Error> {
        let frames = format.root_frames();
        let root = mem.allocate_frames(frames).ok_or(Error {
            operation: Operation::Create,
            location: Location::Table,
            reason: Reason::OutOfMemory { frames },
        })?;
        mem.zero_frames(root, frames);
        Ok(Self { format, root })
    }

    /// Takes over an existing tree whose root is at `root`, for example one built by a
    /// previous boot stage. The engine will free its frames through the allocator on
    /// [`destroy`](Self::destroy), so they must have come from it.
    pub fn from_root(format: F, root: PhysAddr) -> Self {
        Self { format, root }
    }

    /// The physical address of the root table (for VTTBR_EL2, TTBR0_EL2, EPTP or CR3).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.format
    }

    /// Maps `mapping.size` bytes at `mapping.input` to `mapping.output`, using the largest
    /// blocks that the alignment of both addresses allows.
    ///
    /// With [`MapMode::New`], fails without changing anything if a page of the range is
    /// already mapped; with [`MapMode::Replace`], existing mappings are overwritten (break
    /// before make, invalidating through `tlb`).
    pub fn map<M, T>(
        &mut self,
        mem: &mut M,
        tlb: &mut T,
        mapping: Mapping<F::Input>,
        mode: MapMode,
    ) -> Result<(), Error>
    where
        M: FrameAllocator + PhysMemory,
        T: TlbInvalidate<F::Input>,
    {
        let op = Operation::Map;
        let span = self.check_span(op, mapping.input, mapping.size)?;
        let output = mapping.output;
        if !output.is_aligned(PAGE_SIZE) {
            return Err(Self::error(op, Location::Output(output), Reason::Unaligned));
        }
        let bits = self.format.output_bits();
        if output
            .as_u64()
            .checked_add(mapping.size)
            .is_none_or(|end| end > 1 << bits)
        {
            return Err(Self::error(
                op,
                Location::Output(output),
                Reason::OutOfRange { bits },
            ));
        }
        self.check_attributes(op, mapping.input, mapping.attributes)?;
        let change = Change::Map {
            output: output.as_u64(),
            attributes: mapping.attributes,
            replace: mode == MapMode::Replace,
        };
        self.run(op, mem, tlb, span, change)
    }

    /// Unmaps every page of `[input, input + size)`. Pages that are not mapped are skipped;
    /// blocks that straddle the range boundary are split.
    pub fn unmap<M, T>(
        &mut self,
        mem: &mut M,
        tlb: &mut T,
        input: F::Input,
        size: u64,
    ) -> Result<(), Error>
    where
        M: FrameAllocator + PhysMemory,
        T: TlbInvalidate<F::Input>,
    {
        let span = self.check_span(Operation::Unmap, input, size)?;
        self.run(Operation::Unmap, mem, tlb, span, Change::Unmap)
    }

    /// Changes the attributes of every page of `[input, input + size)`, keeping where they
    /// map to. Every page of the range must be mapped.
    pub fn protect<M, T>(
        &mut self,
        mem: &mut M,
        tlb: &mut T,
        input: F::Input,
        size: u64,
        attributes: Attributes,
    ) -> Result<(), Error>
    where
        M: FrameAllocator + PhysMemory,
        T: TlbInvalidate<F::Input>,
    {
        let op = Operation::Protect;
        let span = self.check_span(op, input, size)?;
        self.check_attributes(op, input, attributes)?;
        self.run(op, mem, tlb, span, Change::Protect { attributes })
    }

    /// Translates one input address, or `None` if it is not mapped.
    pub fn translate<M: PhysMemory>(&self, mem: &M, input: F::Input) -> Option<Translation> {
        let offset = self.format.input_offset(input)?;
        let mut level = self.format.start_level();
        let mut table = self.root;
        loop {
            let index = Self::index(level, offset, level == self.format.start_level());
            match self.format.decode(level, mem.read_descriptor(table, index)) {
                Entry::Invalid => return None,
                Entry::Leaf { output, attributes } => {
                    let size = level.entry_size();
                    return Some(Translation {
                        output: PhysAddr::new(output.as_u64() + (offset & (size - 1))),
                        attributes,
                        size,
                        level,
                    });
                }
                Entry::Table(next) => {
                    table = next;
                    level = level.next()?;
                }
            }
        }
    }

    /// The leaf mappings of the tree in ascending input order, one per descriptor.
    pub fn mappings<'a, M: PhysMemory>(&'a self, mem: &'a M) -> Mappings<'a, F, M> {
        Mappings::new(self, mem)
    }

    /// Counts tables and leaves.
    pub fn stats<M: PhysMemory>(&self, mem: &M) -> Stats {
        let mut stats = Stats {
            frames: self.format.root_frames(),
            ..Stats::default()
        };
        let start = self.format.start_level();
        self.count_table(
            mem,
            start,
            self.root,
            self.format.root_entries(),
            &mut stats,
        );
        stats
    }

    fn count_table<M: PhysMemory>(
        &self,
        mem: &M,
        level: Level,
        table: PhysAddr,
        entries: usize,
        stats: &mut Stats,
    ) {
        stats.tables[level.number() as usize] += 1;
        let mut valid = 0;
        for index in 0..entries {
            match self.format.decode(level, mem.read_descriptor(table, index)) {
                Entry::Invalid => continue,
                Entry::Leaf { .. } => stats.leaves[level.number() as usize] += 1,
                Entry::Table(next) => {
                    if let Some(child) = level.next() {
                        stats.frames += 1;
                        self.count_table(mem, child, next, ENTRIES_PER_TABLE, stats);
                    }
                }
            }
            valid += 1;
        }
        if valid == 0 && level != self.format.start_level() {
            stats.empty_tables += 1;
        }
    }

    /// Frees every frame of the tree, root included, and returns how many were freed. The
    /// tree must no longer be in use by any CPU or device.
    pub fn destroy<M: FrameAllocator + PhysMemory>(self, mem: &mut M) -> usize {
        let start = self.format.start_level();
        let mut freed = 0;
        for index in 0..self.format.root_entries() {
            if let Entry::Table(next) = self
                .format
                .decode(start, mem.read_descriptor(self.root, index))
            {
                if let Some(child) = start.next() {
                    freed += free_subtree(&self.format, mem, child, next);
                }
            }
        }
        mem.deallocate_frames(self.root, self.format.root_frames());
        freed + self.format.root_frames()
    }

    fn error(operation: Operation, location: Location, reason: Reason) -> Error {
        Error {
            operation,
            location,
            reason,
        }
    }

    /// Checks a range and converts it to the linear offset space.
    fn check_span(&self, op: Operation, input: F::Input, size: u64) -> Result<Span, Error> {
        let at = Location::input(input);
        if !input.as_u64().is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(Self::error(op, at, Reason::Unaligned));
        }
        if size == 0 {
            return Err(Self::error(op, at, Reason::EmptyRange));
        }
        let bits = self.format.input_bits();
        let out_of_range = Self::error(op, at, Reason::OutOfRange { bits });
        let start = self.format.input_offset(input).ok_or(out_of_range)?;
        let end = start
            .checked_add(size)
            .filter(|&end| end <= 1 << bits)
            .ok_or(out_of_range)?;
        // The last byte must be the same distance away in the address space too; this fails
        // for ranges that cross the non-canonical hole of x86 virtual addresses.
        let last = self.format.offset_input(end - 1).as_u64();
        if input.as_u64().checked_add(size - 1) != Some(last) {
            return Err(out_of_range);
        }
        Ok(Span { start, end })
    }

    fn check_attributes(
        &self,
        op: Operation,
        input: F::Input,
        attributes: Attributes,
    ) -> Result<(), Error> {
        self.format.check_attributes(attributes).map_err(|why| {
            Self::error(
                op,
                Location::input(input),
                Reason::UnsupportedAttributes { attributes, why },
            )
        })
    }

    /// Dry run, frame reservation, then the change itself.
    fn run<M, T>(
        &mut self,
        op: Operation,
        mem: &mut M,
        tlb: &mut T,
        span: Span,
        change: Change,
    ) -> Result<(), Error>
    where
        M: FrameAllocator + PhysMemory,
        T: TlbInvalidate<F::Input>,
    {
        let start = self.format.start_level();
        let entries = self.format.root_entries();
        let root = Node::Real(self.root);
        let mut walk = Walk {
            format: &self.format,
            mem,
            tlb,
            span,
            change,
            pass: Pass::Count,
            needed: 0,
            reserve: Reserve::EMPTY,
        };
        let fail = |(offset, reason): WalkError, format: &F| {
            Self::error(op, Location::input(format.offset_input(offset)), reason)
        };
        walk.visit(start, root, 0, entries)
            .map_err(|e| fail(e, walk.format))?;
        walk.reserve = Reserve::fill(walk.mem, walk.needed).ok_or_else(|| {
            Self::error(
                op,
                Location::input(walk.format.offset_input(span.start)),
                Reason::OutOfMemory {
                    frames: walk.needed,
                },
            )
        })?;
        walk.pass = Pass::Apply;
        let applied = walk.visit(start, root, 0, entries);
        // The dry run counted exactly the frames the change takes; nothing should be left,
        // but return anything that is rather than leak it.
        debug_assert_eq!(walk.reserve.count, 0, "frame reservation miscounted");
        core::mem::replace(&mut walk.reserve, Reserve::EMPTY).release(walk.mem);
        applied.map_err(|e| fail(e, walk.format))
    }

    /// Index of the entry of `level` covering `offset`; the root table may hold more than
    /// 512 entries (concatenation) or fewer.
    fn index(level: Level, offset: u64, is_root: bool) -> usize {
        let index = offset >> level.shift();
        if is_root {
            index as usize
        } else {
            (index as usize) % ENTRIES_PER_TABLE
        }
    }
}

impl<F: Format, M: FrameAllocator + PhysMemory, T: TlbInvalidate<F::Input>> Walk<'_, F, M, T> {
    /// Applies the change to the entries of one table that overlap the span. `base` is the
    /// input offset covered by entry 0.
    fn visit(
        &mut self,
        level: Level,
        node: Node,
        base: u64,
        entries: usize,
    ) -> Result<(), WalkError> {
        let size = level.entry_size();
        let node_end = base + entries as u64 * size;
        let from = self.span.start.max(base);
        let to = self.span.end.min(node_end);
        if from >= to {
            return Ok(());
        }
        let first = ((from - base) / size) as usize;
        let last = ((to - 1 - base) / size) as usize;
        for index in first..=last {
            let entry_base = base + index as u64 * size;
            let old = match node {
                Node::Real(table) => self
                    .format
                    .decode(level, self.mem.read_descriptor(table, index)),
                Node::Virtual(Uniform::Invalid) => Entry::Invalid,
                Node::Virtual(Uniform::Leaf { output, attributes }) => Entry::Leaf {
                    output: PhysAddr::new(output + index as u64 * size),
                    attributes,
                },
            };
            self.entry(level, node, index, entry_base, old)?;
        }
        Ok(())
    }

    /// Applies the change to one entry.
    fn entry(
        &mut self,
        level: Level,
        node: Node,
        index: usize,
        entry_base: u64,
        old: Entry,
    ) -> Result<(), WalkError> {
        let size = level.entry_size();
        let from = self.span.start.max(entry_base);
        let full = from == entry_base && self.span.end >= entry_base + size;
        match self.change {
            Change::Map {
                output,
                attributes,
                replace,
            } => {
                let target = output + (from - self.span.start);
                let leaf_here = level == Level::L3 || self.format.block_allowed(level);
                let as_leaf = full && leaf_here && target.is_multiple_of(size);
                // Conflicts are found in the dry run: a leaf overlapping the range, or a
                // mapped page below a table that a new leaf would replace. Tables the walk
                // descends into are checked entry by entry further down.
                if !replace && self.pass == Pass::Count {
                    let conflict = match old {
                        Entry::Leaf { .. } => Some(from),
                        Entry::Table(_) if as_leaf => {
                            let to = self.span.end.min(entry_base + size);
                            self.first_mapped(level, old, entry_base, from, to)
                        }
                        _ => None,
                    };
                    if let Some(mapped) = conflict {
                        return Err((mapped, Reason::AlreadyMapped));
                    }
                }
                if as_leaf {
                    let new = Entry::Leaf {
                        output: PhysAddr::new(target),
                        attributes,
                    };
                    self.set(level, node, index, entry_base, old, new);
                    Ok(())
                } else {
                    self.descend(level, node, index, entry_base, old, full)
                }
            }
            Change::Unmap => match old {
                Entry::Invalid => Ok(()),
                _ if full => {
                    self.set(level, node, index, entry_base, old, Entry::Invalid);
                    Ok(())
                }
                _ => self.descend(level, node, index, entry_base, old, full),
            },
            Change::Protect { attributes } => match old {
                Entry::Invalid => Err((from, Reason::NotMapped)),
                Entry::Leaf { output, .. } if full => {
                    let new = Entry::Leaf { output, attributes };
                    self.set(level, node, index, entry_base, old, new);
                    Ok(())
                }
                _ => self.descend(level, node, index, entry_base, old, full),
            },
        }
    }

    /// The first mapped input offset in `[from, to)` below an entry, if any.
    fn first_mapped(
        &self,
        level: Level,
        entry: Entry,
        entry_base: u64,
        from: u64,
        to: u64,
    ) -> Option<u64> {
        match entry {
            Entry::Invalid => None,
            Entry::Leaf { .. } => Some(from),
            Entry::Table(table) => {
                let child = level.next()?;
                let size = child.entry_size();
                let first = ((from - entry_base) / size) as usize;
                let last = ((to - 1 - entry_base) / size) as usize;
                (first..=last).find_map(|index| {
                    let base = entry_base + index as u64 * size;
                    let entry = self
                        .format
                        .decode(child, self.mem.read_descriptor(table, index));
                    self.first_mapped(child, entry, base, from.max(base), to.min(base + size))
                })
            }
        }
    }

    /// Goes one level down below an entry, creating or splitting a table as needed, and
    /// afterwards folds the table back if it became empty or uniform.
    fn descend(
        &mut self,
        level: Level,
        node: Node,
        index: usize,
        entry_base: u64,
        old: Entry,
        full: bool,
    ) -> Result<(), WalkError> {
        let Some(child_level) = level.next() else {
            // Level 3 entries are whole pages and never need descending; reaching this is
            // an engine bug, reported rather than panicking.
            return Err((entry_base, Reason::NotMapped));
        };
        let child_size = child_level.entry_size();
        // A block that the change overwrites completely need not be split first: a fresh
        // empty table will be filled entirely.
        let overwritten = full && matches!(self.change, Change::Map { .. });
        if self.pass == Pass::Count {
            let child = match old {
                Entry::Table(table) => Node::Real(table),
                Entry::Invalid => {
                    self.needed += 1;
                    Node::Virtual(Uniform::Invalid)
                }
                Entry::Leaf { .. } if overwritten => {
                    self.needed += 1;
                    Node::Virtual(Uniform::Invalid)
                }
                Entry::Leaf { output, attributes } => {
                    self.needed += 1;
                    Node::Virtual(Uniform::Leaf {
                        output: output.as_u64(),
                        attributes,
                    })
                }
            };
            return self.visit(child_level, child, entry_base, ENTRIES_PER_TABLE);
        }

        let Node::Real(parent) = node else {
            return Err((entry_base, Reason::NotMapped));
        };
        let table = match old {
            Entry::Table(table) => table,
            Entry::Invalid | Entry::Leaf { .. } => {
                let Some(table) = self.reserve.take(self.mem) else {
                    return Err((entry_base, Reason::OutOfMemory { frames: 1 }));
                };
                if let (Entry::Leaf { output, attributes }, false) = (old, overwritten) {
                    // Split: the new table maps exactly what the block mapped.
                    for child in 0..ENTRIES_PER_TABLE {
                        let piece = PhysAddr::new(output.as_u64() + child as u64 * child_size);
                        let descriptor = self.format.encode_leaf(child_level, piece, attributes);
                        self.mem.write_descriptor(table, child, descriptor);
                    }
                }
                let descriptor = self.format.encode_table(level, table);
                self.replace(level, parent, index, entry_base, old, descriptor);
                table
            }
        };
        self.visit(
            child_level,
            Node::Real(table),
            entry_base,
            ENTRIES_PER_TABLE,
        )?;
        self.fold(level, parent, index, entry_base, table);
        Ok(())
    }

    /// Replaces a table below `parent[index]` with an invalid entry if it is empty, or with a
    /// block if it maps one aligned contiguous range with the same attributes.
    fn fold(
        &mut self,
        level: Level,
        parent: PhysAddr,
        index: usize,
        entry_base: u64,
        table: PhysAddr,
    ) {
        let Some(child_level) = level.next() else {
            return;
        };
        let child_size = child_level.entry_size();
        let first = self
            .format
            .decode(child_level, self.mem.read_descriptor(table, 0));
        let replacement = match first {
            Entry::Invalid => {
                let empty = (1..ENTRIES_PER_TABLE).all(|i| {
                    self.format
                        .decode(child_level, self.mem.read_descriptor(table, i))
                        == Entry::Invalid
                });
                if !empty {
                    return;
                }
                Descriptor::INVALID
            }
            Entry::Leaf { output, attributes } => {
                if !self.format.block_allowed(level) || !output.is_aligned(level.entry_size()) {
                    return;
                }
                let uniform = (1..ENTRIES_PER_TABLE).all(|i| {
                    self.format
                        .decode(child_level, self.mem.read_descriptor(table, i))
                        == Entry::Leaf {
                            output: PhysAddr::new(output.as_u64() + i as u64 * child_size),
                            attributes,
                        }
                });
                if !uniform {
                    return;
                }
                self.format.encode_leaf(level, output, attributes)
            }
            Entry::Table(_) => return,
        };
        // Break: the table entry goes, and everything cached below it with it.
        self.mem
            .write_descriptor(parent, index, Descriptor::INVALID);
        self.invalidate(entry_base, level.entry_size(), Stale::Table);
        if replacement != Descriptor::INVALID {
            self.mem.write_descriptor(parent, index, replacement);
        }
        self.mem.deallocate_frames(table, 1);
    }

    /// Sets a fully covered entry to `new`, freeing whatever table it pointed to.
    fn set(
        &mut self,
        level: Level,
        node: Node,
        index: usize,
        entry_base: u64,
        old: Entry,
        new: Entry,
    ) {
        if self.pass == Pass::Count {
            return;
        }
        let Node::Real(table) = node else {
            return;
        };
        let descriptor = match new {
            Entry::Invalid => Descriptor::INVALID,
            Entry::Table(next) => self.format.encode_table(level, next),
            Entry::Leaf { output, attributes } => {
                self.format.encode_leaf(level, output, attributes)
            }
        };
        if self.mem.read_descriptor(table, index) == descriptor {
            return;
        }
        self.replace(level, table, index, entry_base, old, descriptor);
        if let (Entry::Table(subtree), Some(child)) = (old, level.next()) {
            free_subtree(self.format, self.mem, child, subtree);
        }
    }

    /// Writes `table[index] = descriptor` with break-before-make when the old entry was valid.
    fn replace(
        &mut self,
        level: Level,
        table: PhysAddr,
        index: usize,
        entry_base: u64,
        old: Entry,
        descriptor: Descriptor,
    ) {
        let stale = match old {
            Entry::Invalid => None,
            Entry::Leaf { .. } => Some(Stale::Leaf),
            Entry::Table(_) => Some(Stale::Table),
        };
        if let Some(stale) = stale {
            self.mem.write_descriptor(table, index, Descriptor::INVALID);
            self.invalidate(entry_base, level.entry_size(), stale);
        }
        if descriptor != Descriptor::INVALID {
            self.mem.write_descriptor(table, index, descriptor);
        }
    }

    fn invalidate(&mut self, offset: u64, size: u64, stale: Stale) {
        let start = self.format.offset_input(offset);
        self.tlb.invalidate(start, size, stale);
    }
}

/// Frees a table and every table below it; returns the number of frames freed.
fn free_subtree<F: Format, M: FrameAllocator + PhysMemory>(
    format: &F,
    mem: &mut M,
    level: Level,
    table: PhysAddr,
) -> usize {
    let mut freed = 1;
    if let Some(child) = level.next() {
        for index in 0..ENTRIES_PER_TABLE {
            if let Entry::Table(next) = format.decode(level, mem.read_descriptor(table, index)) {
                freed += free_subtree(format, mem, child, next);
            }
        }
    }
    mem.deallocate_frames(table, 1);
    freed
}

/// Iterator over the leaf mappings of a tree; see [`PageTable::mappings`].
#[derive(Debug)]
pub struct Mappings<'a, F: Format, M> {
    format: &'a F,
    mem: &'a M,
    /// Per level: the table being scanned, the input offset of its entry 0, the next index
    /// and the number of entries.
    stack: [(PhysAddr, u64, usize, usize); 4],
    depth: usize,
    start: Level,
}

impl<'a, F: Format, M: PhysMemory> Mappings<'a, F, M> {
    fn new(table: &'a PageTable<F>, mem: &'a M) -> Self {
        let mut stack = [(PhysAddr::new(0), 0, 0, 0); 4];
        stack[0] = (table.root, 0, 0, table.format.root_entries());
        Self {
            format: &table.format,
            mem,
            stack,
            depth: 1,
            start: table.format.start_level(),
        }
    }
}

impl<F: Format, M: PhysMemory> Iterator for Mappings<'_, F, M> {
    type Item = Mapping<F::Input>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.depth > 0 {
            let top = self.depth - 1;
            let (table, base, index, entries) = self.stack[top];
            if index >= entries {
                self.depth -= 1;
                continue;
            }
            self.stack[top].2 += 1;
            let level = Level::new(self.start.number() + top as u8)?;
            let size = level.entry_size();
            let entry_base = base + index as u64 * size;
            match self
                .format
                .decode(level, self.mem.read_descriptor(table, index))
            {
                Entry::Invalid => {}
                Entry::Leaf { output, attributes } => {
                    return Some(Mapping {
                        input: self.format.offset_input(entry_base),
                        output,
                        size,
                        attributes,
                    })
                }
                Entry::Table(next) => {
                    if level.next().is_some() && self.depth < self.stack.len() {
                        self.stack[self.depth] = (next, entry_base, 0, ENTRIES_PER_TABLE);
                        self.depth += 1;
                    }
                }
            }
        }
        None
    }
}
