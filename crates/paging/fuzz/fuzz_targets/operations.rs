//! Sequences of map / unmap / protect / translate operations on one tree, checked against the
//! reference [`Model`] after every step.
//!
//! The input picks a format (with its parameters), where the window of addresses lies in the
//! input space (bottom, middle, top) and up to [`MAX_OPS`] operations. Addresses and sizes are
//! mostly page-granular and biased toward 2 MiB and 1 GiB alignment inside the window, but
//! sometimes raw: unaligned, zero, huge, outside the space or across the x86 canonical hole.
//!
//! After every operation:
//! - success or the specific [`Reason`] (and the address it names) is what the model predicts;
//!   running out of frames is accepted only under a frame limit, and only when the operation
//!   really needs more frames than the limit leaves (checked by replaying it without limit);
//! - a failed operation leaves every allocated frame, byte for byte, and the frame count as
//!   they were;
//! - a successful one follows break-before-make and invalidates every changed range;
//! - the merged leaves equal the merged model, every leaf is as large as alignment allows, and
//!   the tree owns exactly the frames in use, with no empty table.
//!
//! At the end, destroying the tree frees every frame.
//!
//! Work per input is bounded: a map that would create many leaves is shortened (see
//! [`MAX_LEAVES_PER_MAP`] and [`LEAF_BUDGET`]). Most of the remaining cost is walking the whole
//! tree after each change; the default cargo-fuzz build (AddressSanitizer, compare tracing)
//! runs one to two thousand inputs a second, an uninstrumented-by-ASan one (`-s none`) a few
//! thousand.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cellvisor_paging::fake::{check_break_before_make, merge, Event, FakeMemory, Interval, Model};
use cellvisor_paging::{
    Access, Address, Attributes, Cacheability, Ept, Error, Format, FrameAllocator, HostTables,
    LargePages, Level, Location, MapMode, Mapping, MemoryType, NotLive, Npt, PageTable, PhysAddr,
    PhysMemory, Reason, Stage1El2, Stage2, Stale, TlbInvalidate,
};
use libfuzzer_sys::fuzz_target;
use std::fmt::Debug;

const KIB4: u64 = 4096;
const MIB2: u64 = 2 << 20;
const GIB1: u64 = 1 << 30;

/// Operations run per input at most.
const MAX_OPS: usize = 64;
/// Size of the window of input offsets most operations fall in.
const WINDOW: u64 = 8 * GIB1;
/// Leaves one map may create at most (4 Ki: 16 MiB of 4 KiB pages, 8 GiB of 2 MiB blocks);
/// longer maps are shortened.
const MAX_LEAVES_PER_MAP: u64 = 4 * 1024;
/// Leaves all maps of one input may create together before each map is limited to one table.
const LEAF_BUDGET: u64 = 16 * 1024;
/// Frames of the fake memory: more than any bounded input can use (the leaf limits keep trees
/// to a few hundred frames), few enough that creating and scanning the fake stays cheap.
const CAPACITY: usize = 2048;

fuzz_target!(|input: Input| {
    let ops = &input.ops[..input.ops.len().min(MAX_OPS)];
    match input.format {
        FormatChoice::Stage2 { bits } => {
            let bits = Stage2::MIN_INPUT_BITS + u32::from(bits) % 17;
            run(Stage2::new(bits).unwrap(), input.placement, ops);
        }
        FormatChoice::Stage1El2 { bits } => {
            let bits = Stage1El2::MIN_INPUT_BITS + u32::from(bits) % 24;
            run(Stage1El2::new(bits).unwrap(), input.placement, ops);
        }
        FormatChoice::Ept {
            two_mib,
            one_gib,
            execute_only,
        } => {
            let format = Ept::new(LargePages { two_mib, one_gib }).with_execute_only(execute_only);
            run(format, input.placement, ops);
        }
        FormatChoice::Npt { one_gib } => {
            let large = LargePages {
                two_mib: true,
                one_gib,
            };
            run(Npt::new(large), input.placement, ops);
        }
        FormatChoice::HostTables { one_gib } => {
            let large = LargePages {
                two_mib: true,
                one_gib,
            };
            run(HostTables::new(large), input.placement, ops);
        }
    }
});

/// The decoded fuzz input.
#[derive(Arbitrary, Debug)]
struct Input {
    format: FormatChoice,
    placement: Placement,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum FormatChoice {
    /// Input size 32 + bits % 17 (32..=48).
    Stage2 {
        bits: u8,
    },
    /// Input size 25 + bits % 24 (25..=48).
    Stage1El2 {
        bits: u8,
    },
    Ept {
        two_mib: bool,
        one_gib: bool,
        execute_only: bool,
    },
    Npt {
        one_gib: bool,
    },
    HostTables {
        one_gib: bool,
    },
}

/// Where the window lies in the input offset space. The middle of the x86 host space is the
/// canonical hole.
#[derive(Arbitrary, Clone, Copy, Debug)]
enum Placement {
    Bottom,
    Middle,
    Top,
}

/// The start of a range (or an address to translate).
#[derive(Clone, Copy, Debug)]
enum Start {
    /// An offset into the window (taken modulo its size).
    Window(u64),
    /// So many pages before the end of the window.
    BeforeEnd(u64),
    /// So many pages into the range last mapped (modulo its size).
    InLast(u64),
    /// A raw input address, anywhere.
    Raw(u64),
}

impl<'a> Arbitrary<'a> for Start {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=16)? {
            0..=3 => Start::Window(u64::from(u.arbitrary::<u8>()?) * GIB1),
            4..=6 => Start::Window(u64::from(u.arbitrary::<u16>()?) * MIB2),
            7..=8 => {
                let pages = u.int_in_range(1u64..=3)?;
                Start::Window(u64::from(u.arbitrary::<u16>()?) * MIB2 + pages * KIB4)
            }
            9..=11 => Start::Window(u64::from(u.arbitrary::<u32>()?) * KIB4),
            12 => Start::BeforeEnd(u64::from(u.arbitrary::<u16>()?) + 1),
            13 => Start::InLast(u64::from(u.arbitrary::<u8>()? % 4) * 512),
            14 => Start::InLast(u64::from(u.arbitrary::<u16>()?)),
            15 => Start::Window(u.arbitrary()?),
            _ => Start::Raw(u.arbitrary()?),
        })
    }
}

/// The size of a range.
#[derive(Clone, Copy, Debug)]
enum Size {
    Bytes(u64),
    /// Up to the end of the window, plus or minus some pages.
    ToEnd(i8),
    /// Up to the end of the range last mapped, plus or minus some pages.
    ToLastEnd(i8),
}

impl<'a> Arbitrary<'a> for Size {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=16)? {
            0..=2 => Size::Bytes(u.int_in_range(1u64..=4)? * GIB1),
            3..=6 => Size::Bytes((u64::from(u.arbitrary::<u8>()?) + 1) * MIB2),
            7 => {
                let pages = u.int_in_range(1u64..=3)?;
                Size::Bytes((u64::from(u.arbitrary::<u8>()?) + 1) * MIB2 + pages * KIB4)
            }
            8..=9 => Size::Bytes((u64::from(u.arbitrary::<u16>()?) % 2048 + 1) * KIB4),
            10..=11 => Size::ToEnd(u.arbitrary()?),
            12..=13 => Size::ToLastEnd(u.arbitrary::<i8>()? % 4),
            14 => Size::Bytes(u64::from(u.arbitrary::<u16>()?)),
            15 => Size::Bytes(u.arbitrary()?),
            _ => Size::Bytes(0),
        })
    }
}

/// Where a map goes.
#[derive(Clone, Copy, Debug)]
enum Output {
    /// The input offset plus this much.
    Shift(u64),
    /// This physical address.
    Absolute(u64),
}

impl<'a> Arbitrary<'a> for Output {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        const SHIFTS: [u64; 8] = [
            KIB4,
            MIB2,
            GIB1,
            MIB2 + KIB4,
            GIB1 + MIB2,
            5 * KIB4,
            3 * GIB1,
            512 * GIB1,
        ];
        Ok(match u.int_in_range(0u8..=15)? {
            0..=5 => Output::Shift(0),
            6..=9 => Output::Shift(*u.choose(&SHIFTS)?),
            10..=11 => Output::Absolute(u64::from(u.arbitrary::<u32>()?) << 21),
            12 => Output::Absolute(u64::from(u.arbitrary::<u16>()?) << 30),
            13 => Output::Absolute(u64::from(u.arbitrary::<u32>()?) << 12),
            14 => Output::Absolute(u.arbitrary::<u64>()? & !(KIB4 - 1)),
            _ => Output::Absolute(u.arbitrary()?),
        })
    }
}

/// Attributes from one byte: every access combination with every memory type, so that some
/// are rejected by some formats.
#[derive(Clone, Copy, Debug)]
struct Attrs(Attributes);

impl<'a> Arbitrary<'a> for Attrs {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let byte: u8 = u.arbitrary()?;
        let access = Access::from_bits_truncate(byte & 7);
        let memory = match (byte >> 3) % 4 {
            0 => MemoryType::Normal(Cacheability::WriteBack),
            1 => MemoryType::Device,
            2 => MemoryType::Normal(Cacheability::WriteThrough),
            _ => MemoryType::Normal(Cacheability::NonCacheable),
        };
        Ok(Attrs(Attributes::new(access, memory)))
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Map {
        start: Start,
        size: Size,
        output: Output,
        attributes: Attrs,
        replace: bool,
    },
    Unmap {
        start: Start,
        size: Size,
    },
    Protect {
        start: Start,
        size: Size,
        attributes: Attrs,
    },
    Translate {
        at: Start,
        byte: u16,
    },
    /// Limits the frames in use to the current count plus so many, or lifts the limit.
    Limit(Option<u8>),
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=15)? {
            0..=6 => Op::Map {
                start: u.arbitrary()?,
                size: u.arbitrary()?,
                output: u.arbitrary()?,
                attributes: u.arbitrary()?,
                replace: u.arbitrary()?,
            },
            7..=9 => Op::Unmap {
                start: u.arbitrary()?,
                size: u.arbitrary()?,
            },
            10..=12 => Op::Protect {
                start: u.arbitrary()?,
                size: u.arbitrary()?,
                attributes: u.arbitrary()?,
            },
            13..=14 => Op::Translate {
                at: u.arbitrary()?,
                byte: u.arbitrary()?,
            },
            _ => Op::Limit(u.arbitrary()?),
        })
    }
}

/// An operation with its addresses resolved.
#[derive(Clone, Copy, Debug)]
enum Action<A> {
    Map {
        input: A,
        size: u64,
        output: u64,
        attributes: Attributes,
        mode: MapMode,
    },
    Unmap {
        input: A,
        size: u64,
    },
    Protect {
        input: A,
        size: u64,
        attributes: Attributes,
    },
}

impl<A: Address> Action<A> {
    fn range(&self) -> (A, u64) {
        match *self {
            Action::Map { input, size, .. }
            | Action::Unmap { input, size }
            | Action::Protect { input, size, .. } => (input, size),
        }
    }

    fn perform<F, M, T>(
        &self,
        table: &mut PageTable<F>,
        mem: &mut M,
        tlb: &mut T,
    ) -> Result<(), Error>
    where
        F: Format<Input = A>,
        M: FrameAllocator + PhysMemory,
        T: TlbInvalidate<A>,
    {
        match *self {
            Action::Map {
                input,
                size,
                output,
                attributes,
                mode,
            } => {
                let mapping = Mapping {
                    input,
                    output: PhysAddr::new(output),
                    size,
                    attributes,
                };
                table.map(mem, tlb, mapping, mode)
            }
            Action::Unmap { input, size } => table.unmap(mem, tlb, input, size),
            Action::Protect {
                input,
                size,
                attributes,
            } => table.protect(mem, tlb, input, size, attributes),
        }
    }
}

/// The window of input offsets most operations use.
#[derive(Clone, Copy, Debug)]
struct Window {
    base: u64,
    size: u64,
}

struct Harness<F: Format> {
    table: PageTable<F>,
    mem: FakeMemory,
    model: Model,
    window: Window,
    /// The frame limit in force, if any.
    limit: Option<usize>,
    /// Leaves maps may still create before being limited to one table's worth.
    leaf_budget: u64,
    /// The input offsets `[start, end)` of the range last mapped (initially the first page
    /// of the window).
    last: (u64, u64),
}

fn run<F: Format + Copy + Debug>(format: F, placement: Placement, ops: &[Op]) {
    let space = 1u64 << format.input_bits();
    let size = space.min(WINDOW);
    let base = match placement {
        Placement::Bottom => 0,
        Placement::Middle => space / 2 - size / 2,
        Placement::Top => space - size,
    };
    let mut mem = FakeMemory::new(PhysAddr::new(0x40_0000_0000), CAPACITY);
    let table = PageTable::new(format, &mut mem).expect("creating an empty tree");
    let mut h = Harness {
        table,
        mem,
        model: Model::new(),
        window: Window { base, size },
        limit: None,
        leaf_budget: LEAF_BUDGET,
        last: (base, base + KIB4),
    };
    h.check_tree();
    for op in ops {
        h.step(op);
    }
    let stats = h.table.stats(&h.mem);
    let freed = h.table.destroy(&mut h.mem);
    assert_eq!(
        freed, stats.frames,
        "destroy freed a different number of frames"
    );
    assert_eq!(h.mem.frames_in_use(), 0, "frames leaked after destroy");
}

impl<F: Format + Copy + Debug> Harness<F> {
    fn format(&self) -> F {
        *self.table.format()
    }

    /// The input address of a start.
    fn start(&self, start: Start) -> F::Input {
        let Window { base, size } = self.window;
        match start {
            Start::Window(offset) => self.format().offset_input(base + offset % size),
            Start::BeforeEnd(pages) => self
                .format()
                .offset_input(base + size - (pages * KIB4) % size.max(KIB4)),
            Start::InLast(pages) => {
                let (start, end) = self.last;
                self.format()
                    .offset_input(start + pages * KIB4 % (end - start))
            }
            Start::Raw(raw) => F::Input::new(raw),
        }
    }

    /// The input offset of an address, or of the window base for addresses outside the space.
    fn offset_or_base(&self, input: F::Input) -> u64 {
        self.format()
            .input_offset(input)
            .unwrap_or(self.window.base)
    }

    fn size(&self, input: F::Input, size: Size) -> u64 {
        let (end, pages) = match size {
            Size::Bytes(bytes) => return bytes,
            Size::ToEnd(pages) => (self.window.base + self.window.size, pages),
            Size::ToLastEnd(pages) => (self.last.1, pages),
        };
        end.wrapping_sub(self.offset_or_base(input))
            .wrapping_add_signed(i64::from(pages) * KIB4 as i64)
    }

    fn step(&mut self, op: &Op) {
        let action = match *op {
            Op::Map {
                start,
                size,
                output,
                attributes,
                replace,
            } => {
                let input = self.start(start);
                let size = self.size(input, size);
                let output = match output {
                    Output::Shift(shift) => self.offset_or_base(input).wrapping_add(shift),
                    Output::Absolute(output) => output,
                };
                let mode = if replace {
                    MapMode::Replace
                } else {
                    MapMode::New
                };
                let size = self.bound_map(input, size, output);
                Action::Map {
                    input,
                    size,
                    output,
                    attributes: attributes.0,
                    mode,
                }
            }
            Op::Unmap { start, size } => {
                let input = self.start(start);
                Action::Unmap {
                    input,
                    size: self.size(input, size),
                }
            }
            Op::Protect {
                start,
                size,
                attributes,
            } => {
                let input = self.start(start);
                Action::Protect {
                    input,
                    size: self.size(input, size),
                    attributes: attributes.0,
                }
            }
            Op::Translate { at, byte } => {
                let at = self.start(at).as_u64().wrapping_add(u64::from(byte % 4096));
                self.check_translate(F::Input::new(at));
                return;
            }
            Op::Limit(extra) => {
                self.limit = extra.map(|extra| self.mem.frames_in_use() + usize::from(extra % 8));
                self.mem.set_limit(self.limit.unwrap_or(CAPACITY));
                return;
            }
        };
        self.apply(&action);
    }

    /// Shortens a valid map that would create more leaves than allowed; other maps fail
    /// before doing any work and are left as they are.
    fn bound_map(&mut self, input: F::Input, size: u64, output: u64) -> u64 {
        let format = self.format();
        let Ok((start, _)) = check_range(&format, input, size) else {
            return size;
        };
        // The largest leaf the distance between input and output allows.
        let delta = output.wrapping_sub(start);
        let granule = [Level::L1, Level::L2]
            .into_iter()
            .find(|&level| format.block_allowed(level) && delta.is_multiple_of(level.entry_size()))
            .map_or(KIB4, Level::entry_size);
        let cap = MAX_LEAVES_PER_MAP.min(self.leaf_budget).max(512);
        let leaves = (size / granule).min(cap);
        self.leaf_budget = self.leaf_budget.saturating_sub(leaves);
        size.min(cap * granule)
    }

    /// What the model says an action must do: success, or the reason and the address the
    /// error names.
    fn expected(&self, action: &Action<F::Input>) -> Result<(), (Reason, Location)> {
        let format = self.format();
        let (input, size) = action.range();
        let at_input = Location::Input {
            kind: F::Input::KIND,
            address: input.as_u64(),
        };
        let at_offset = |offset: u64| Location::Input {
            kind: F::Input::KIND,
            address: format.offset_input(offset).as_u64(),
        };
        let (start, end) = check_range(&format, input, size).map_err(|r| (r, at_input))?;
        let attributes_ok = |attributes: Attributes| {
            format
                .check_attributes(attributes)
                .map_err(|why| (Reason::UnsupportedAttributes { attributes, why }, at_input))
        };
        match *action {
            Action::Map {
                output,
                attributes,
                mode,
                ..
            } => {
                let at_output = Location::Output(PhysAddr::new(output));
                if !output.is_multiple_of(KIB4) {
                    return Err((Reason::Unaligned, at_output));
                }
                let bits = format.output_bits();
                if output.checked_add(size).is_none_or(|end| end > 1 << bits) {
                    return Err((Reason::OutOfRange { bits }, at_output));
                }
                attributes_ok(attributes)?;
                if mode == MapMode::New {
                    if let Some(mapped) = self.model.first_mapped(start, end) {
                        return Err((Reason::AlreadyMapped, at_offset(mapped)));
                    }
                }
            }
            Action::Unmap { .. } => {}
            Action::Protect { attributes, .. } => {
                attributes_ok(attributes)?;
                if let Some(hole) = self.model.first_unmapped(start, end) {
                    return Err((Reason::NotMapped, at_offset(hole)));
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, action: &Action<F::Input>) {
        let want = self.expected(action);
        let in_use = self.mem.frames_in_use();
        let may_fail = want.is_err() || self.limit.is_some();
        let before = may_fail.then(|| self.mem.snapshot());
        let before_model = want.is_ok().then(|| self.model.clone());

        let mut tlb = self.mem.tlb();
        self.mem.start_recording();
        let result = action.perform(&mut self.table, &mut self.mem, &mut tlb);
        let events = self.mem.take_events();

        match (want, result) {
            (Ok(()), Ok(())) => {}
            (Ok(()), Err(error)) if matches!(error.reason, Reason::OutOfMemory { .. }) => {
                let Some(limit) = self.limit else {
                    panic!("{action:?}: out of memory without a frame limit: {error}");
                };
                assert_eq!(error.location, location_of(action.range().0), "{error}");
                self.assert_unchanged(before, in_use, action);
                // Replay without a limit: the action must succeed and need more frames than
                // the limit left.
                let mut mem = self.mem.clone();
                mem.set_limit(CAPACITY);
                let mut table = PageTable::from_root(self.format(), self.table.root());
                let allocations = mem.allocation_count();
                if let Err(e) = action.perform(&mut table, &mut mem, &mut NotLive) {
                    panic!("{action:?}: failed with {e} after running out of memory");
                }
                let needed = (mem.allocation_count() - allocations) as usize;
                assert_eq!(
                    error.reason,
                    Reason::OutOfMemory { frames: needed },
                    "{action:?}: wrong frame count in {error}"
                );
                assert!(
                    in_use + needed > limit,
                    "{action:?}: out of memory with {in_use} + {needed} frames, limit {limit}"
                );
                return;
            }
            (Err((reason, location)), Err(error)) => {
                assert_eq!(error.reason, reason, "{action:?}: {error}");
                assert_eq!(error.location, location, "{action:?}: {error}");
                self.assert_unchanged(before, in_use, action);
                return;
            }
            (want, got) => panic!("{action:?}: expected {want:?}, got {got:?}"),
        }

        let format = self.format();
        let (input, size) = action.range();
        let start = format.input_offset(input).expect("valid range");
        let end = start + size;
        match *action {
            Action::Map {
                output, attributes, ..
            } => {
                self.model.map(start, end, output, attributes);
                self.last = (start, end);
            }
            Action::Unmap { .. } => self.model.unmap(start, end),
            Action::Protect { attributes, .. } => self.model.protect(start, end, attributes),
        }
        if let Err(why) = check_break_before_make(&events) {
            panic!("{action:?}: {why}");
        }
        let before_model = before_model.expect("kept for successful actions");
        self.check_invalidations(action, &events, &before_model, start, end);
        // Walking the whole tree is most of the cost of an operation: skip it when neither
        // the tree nor the translation changed.
        let wrote = events.iter().any(|e| matches!(e, Event::Write { .. }));
        if wrote || self.model.merged() != before_model.merged() {
            self.check_tree();
        }
    }

    fn assert_unchanged(
        &self,
        before: Option<Vec<(PhysAddr, [u64; 512])>>,
        in_use: usize,
        action: &Action<F::Input>,
    ) {
        let before = before.expect("snapshot taken for actions that may fail");
        assert_eq!(
            self.mem.frames_in_use(),
            in_use,
            "{action:?}: failed action leaked frames"
        );
        assert!(
            self.mem.snapshot() == before,
            "{action:?}: failed action changed the tree"
        );
    }

    /// Every range invalidated as a leaf was mapped, every range invalidated as a table held
    /// a mapping, and every page whose translation changed was invalidated.
    fn check_invalidations(
        &self,
        action: &Action<F::Input>,
        events: &[Event],
        before: &Model,
        start: u64,
        end: u64,
    ) {
        let format = self.format();
        let mut covered: Vec<(u64, u64)> = Vec::new();
        for event in events {
            let Event::Invalidate {
                start: at,
                size,
                stale,
            } = *event
            else {
                continue;
            };
            let from = format
                .input_offset(F::Input::new(at))
                .unwrap_or_else(|| panic!("{action:?}: invalidation of {at:#x} outside the space"));
            let to = from + size;
            match stale {
                Stale::Leaf => assert!(
                    before.first_unmapped(from, to).is_none(),
                    "{action:?}: leaf invalidation {from:#x}..{to:#x} covers unmapped pages"
                ),
                Stale::Table => assert!(
                    before.first_mapped(from, to).is_some(),
                    "{action:?}: table invalidation {from:#x}..{to:#x} covers nothing mapped"
                ),
            }
            covered.push((from, to));
        }
        covered.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (from, to) in covered {
            match merged.last_mut() {
                Some(last) if last.1 >= from => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        for piece in before.overlapping(start, end) {
            let from = piece.start.max(start);
            let to = piece.end.min(end);
            let output = piece.output + (from - piece.start);
            // The model is linear on the piece after the action too: one sample decides.
            if self.model.translate(from) == Some((output, piece.attributes)) {
                continue;
            }
            assert!(
                merged.iter().any(|&(a, b)| a <= from && to <= b),
                "{action:?}: changed range {from:#x}..{to:#x} not invalidated ({merged:x?})"
            );
        }
    }

    fn check_translate(&self, at: F::Input) {
        let format = self.format();
        let got = self.table.translate(&self.mem, at);
        let Some(offset) = format.input_offset(at) else {
            assert_eq!(got, None, "{at:?} is outside the space");
            return;
        };
        let want = self.model.translate(offset);
        assert_eq!(
            got.map(|t| (t.output.as_u64(), t.attributes)),
            want,
            "translate {at:?}"
        );
        let Some(t) = got else { return };
        // The leaf found covers an aligned block that the model maps linearly.
        assert_eq!(t.size, t.level.entry_size(), "translate {at:?}: {t:?}");
        assert!(
            t.level == Level::L3 || format.block_allowed(t.level),
            "translate {at:?}: leaf at {:?}",
            t.level
        );
        let block = offset & !(t.size - 1);
        let output = t.output.as_u64() - (offset - block);
        assert_eq!(
            output % t.size,
            0,
            "translate {at:?}: unaligned block {t:?}"
        );
        assert_eq!(
            self.model.first_unmapped(block, block + t.size),
            None,
            "translate {at:?}: {t:?} covers unmapped pages"
        );
        assert_eq!(
            merge(self.model.overlapping(block, block + t.size)).len(),
            1,
            "translate {at:?}: {t:?} covers pages the model maps differently"
        );
        assert_eq!(
            self.model.translate(block),
            Some((output, t.attributes)),
            "translate {at:?}: {t:?}"
        );
    }

    fn check_tree(&self) {
        let format = self.format();
        let stats = self.table.stats(&self.mem);
        assert_eq!(stats.empty_tables, 0, "empty table left in the tree");
        assert_eq!(
            stats.frames,
            self.mem.frames_in_use(),
            "frames in use differ from the tree's frames"
        );

        let mut leaves: Vec<Interval> = Vec::new();
        let mut per_level = [0usize; 4];
        // The parent entry last judged: the leaves below one entry share the verdict.
        let mut judged = None;
        for m in self.table.mappings(&self.mem) {
            let offset = format
                .input_offset(m.input)
                .unwrap_or_else(|| panic!("{m:?}: address outside the space"));
            let level = [Level::L1, Level::L2, Level::L3]
                .into_iter()
                .find(|level| level.entry_size() == m.size)
                .unwrap_or_else(|| panic!("{m:?}: not the size of a leaf"));
            assert!(
                level == Level::L3 || format.block_allowed(level),
                "{m:?}: block where the format allows none"
            );
            assert_eq!(offset % m.size, 0, "{m:?}: unaligned input");
            assert_eq!(m.output.as_u64() % m.size, 0, "{m:?}: unaligned output");
            per_level[usize::from(level.number())] += 1;
            if let Some(last) = leaves.last() {
                assert!(
                    last.end <= offset,
                    "{m:?}: leaves out of order or overlapping"
                );
            }
            leaves.push(Interval {
                start: offset,
                end: offset + m.size,
                output: m.output.as_u64(),
                attributes: m.attributes,
            });

            // Largest blocks: the parent entry could not have been one block.
            let parent = level.number().checked_sub(1).and_then(Level::new);
            let Some(parent) =
                parent.filter(|&p| p >= format.start_level() && format.block_allowed(p))
            else {
                continue;
            };
            let size = parent.entry_size();
            let base = offset & !(size - 1);
            if judged == Some((base, size)) {
                continue;
            }
            judged = Some((base, size));
            let pieces = merge(self.model.overlapping(base, base + size));
            let could_be_block = pieces.len() == 1
                && pieces[0].start <= base
                && pieces[0].end >= base + size
                && (pieces[0].output + (base - pieces[0].start)).is_multiple_of(size);
            assert!(
                !could_be_block,
                "{m:?} lies in a range that fits one {parent:?} block"
            );
        }
        assert_eq!(per_level, stats.leaves, "leaf counts differ from stats");
        assert!(
            merge(leaves) == self.model.merged(),
            "the tree differs from the model"
        );
    }
}

/// The error location for an input address.
fn location_of<A: Address>(input: A) -> Location {
    Location::Input {
        kind: A::KIND,
        address: input.as_u64(),
    }
}

/// Checks a range as every operation must: page-aligned start and size, not empty, and inside
/// the input space (every address of it translatable, so not across the x86 canonical hole).
/// Returns the range in input offsets.
fn check_range<F: Format>(format: &F, input: F::Input, size: u64) -> Result<(u64, u64), Reason> {
    if !input.as_u64().is_multiple_of(KIB4) || !size.is_multiple_of(KIB4) {
        return Err(Reason::Unaligned);
    }
    if size == 0 {
        return Err(Reason::EmptyRange);
    }
    let bits = format.input_bits();
    let out_of_range = Reason::OutOfRange { bits };
    let start = format.input_offset(input).ok_or(out_of_range)?;
    let end = start
        .checked_add(size)
        .filter(|&end| end <= 1 << bits)
        .ok_or(out_of_range)?;
    // The last address must exist and lie as far into the offset space as into the address
    // space.
    let last = input.as_u64().checked_add(size - 1).ok_or(out_of_range)?;
    if format.input_offset(F::Input::new(last)) != Some(end - 1) {
        return Err(out_of_range);
    }
    Ok((start, end))
}
