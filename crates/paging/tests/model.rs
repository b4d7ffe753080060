//! Property tests: random sequences of map / unmap / protect against a reference model, for
//! every format. After every operation the tree must translate exactly like the model, use
//! the largest blocks alignment allows, hold no empty table, own exactly the frames it uses,
//! follow break-before-make and invalidate exactly the stale ranges. A failed operation must
//! leave the tree (every allocated frame, byte for byte) as it was. Destroying the tree must
//! return every frame.

#![cfg(feature = "fake")]

use cellvisor_paging::fake::{check_break_before_make, merge, Event, FakeMemory, Interval, Model};
use cellvisor_paging::{
    Access, Address, Attributes, Cacheability, Ept, Error, Format, GuestPhysAddr, HostTables,
    LargePages, Level, Location, MapMode, Mapping, MemoryType, Npt, PageTable, PhysAddr, Reason,
    Stage1El2, Stage2, Stale, VirtAddr,
};
use proptest::prelude::*;

const KIB4: u64 = 4096;
const MIB2: u64 = 2 << 20;
const GIB1: u64 = 1 << 30;

/// Attributes the tests draw from; some formats reject some of them.
const ATTRIBUTES: [Attributes; 8] = [
    Attributes::RAM_RWX,
    Attributes::RAM_RW,
    Attributes::RAM_RO,
    Attributes::DEVICE_RW,
    Attributes::new(Access::RX, MemoryType::Normal(Cacheability::WriteThrough)),
    Attributes::new(Access::RW, MemoryType::Normal(Cacheability::NonCacheable)),
    Attributes::new(Access::WRITE, MemoryType::Normal(Cacheability::WriteBack)),
    Attributes::new(Access::EXECUTE, MemoryType::Normal(Cacheability::WriteBack)),
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Map { replace: bool },
    Unmap,
    Protect,
}

/// One operation, in the test window's coordinates.
#[derive(Clone, Copy, Debug)]
struct Op {
    kind: Kind,
    /// Offset of the range inside the window.
    start: u64,
    size: u64,
    /// Output of the range start, minus the window-relative start (so a mapping is a shifted
    /// identity map whose alignment differs from the input's).
    shift: u64,
    attributes: usize,
    /// Frames the allocator may hand out during the operation, if limited.
    frame_budget: Option<usize>,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    // (granule class, start in granules, count, extra pages before/after)
    (0usize..4, 0u64..64, 1u64..4, 0u64..3, 0u64..3, 1u64..700).prop_map(
        |(class, start, count, before, after, pages)| match class {
            0 => (start * 97 * KIB4 % (8 * GIB1), pages * KIB4),
            1 => (
                start * MIB2 * 37 % (8 * GIB1) + before * KIB4,
                count * MIB2 + after * KIB4,
            ),
            2 => (
                (start % 8) * GIB1 + before * MIB2,
                count * GIB1 - before * MIB2 + after * KIB4,
            ),
            _ => ((start % 8) * GIB1, count * GIB1),
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        4 => any::<bool>().prop_map(|replace| Kind::Map { replace }),
        2 => Just(Kind::Unmap),
        2 => Just(Kind::Protect),
    ];
    let shift = prop_oneof![
        Just(0u64),
        Just(GIB1),
        Just(3 * GIB1 + MIB2),
        Just(5 * KIB4)
    ];
    let budget = prop_oneof![6 => Just(None), 1 => (0usize..3).prop_map(Some)];
    (kind, range(), shift, 0usize..ATTRIBUTES.len(), budget).prop_map(
        |(kind, (start, size), shift, attributes, frame_budget)| Op {
            kind,
            start,
            size,
            shift,
            attributes,
            frame_budget,
        },
    )
}

/// Where the window of addresses the test uses lies in the format's input offset space:
/// at the bottom or at the very top (to reach the end of the address space).
#[derive(Clone, Copy, Debug)]
struct Window {
    base: u64,
    size: u64,
}

/// What the model says an operation must do.
fn expected<F: Format>(format: &F, model: &Model, window: Window, op: &Op) -> Result<(), Reason> {
    let bits = format.input_bits();
    let start = window.base + op.start;
    let end = start + op.size;
    if end > 1 << bits {
        return Err(Reason::OutOfRange { bits });
    }
    let attributes = ATTRIBUTES[op.attributes];
    match op.kind {
        Kind::Map { replace } => {
            if let Err(why) = format.check_attributes(attributes) {
                return Err(Reason::UnsupportedAttributes { attributes, why });
            }
            if !replace && model.first_mapped(start, end).is_some() {
                return Err(Reason::AlreadyMapped);
            }
        }
        Kind::Unmap => {}
        Kind::Protect => {
            if let Err(why) = format.check_attributes(attributes) {
                return Err(Reason::UnsupportedAttributes { attributes, why });
            }
            if model.first_unmapped(start, end).is_some() {
                return Err(Reason::NotMapped);
            }
        }
    }
    Ok(())
}

struct Harness<F: Format> {
    table: PageTable<F>,
    mem: FakeMemory,
    model: Model,
    window: Window,
}

impl<F: Format + Copy> Harness<F> {
    fn input(&self, offset: u64) -> F::Input {
        self.table.format().offset_input(offset)
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let format = *self.table.format();
        let start = self.window.base + op.start;
        let end = start + op.size;
        let attributes = ATTRIBUTES[op.attributes];
        let output = op.start + op.shift;
        let want = expected(&format, &self.model, self.window, op);

        // Only an operation that may fail needs the state to compare with.
        let may_fail = want.is_err() || op.frame_budget.is_some();
        let before_snapshot = if may_fail {
            self.mem.snapshot()
        } else {
            Vec::new()
        };
        let before_model = self.model.clone();
        let in_use = self.mem.frames_in_use();
        if let Some(budget) = op.frame_budget {
            self.mem.set_limit(in_use + budget);
        }
        let mut tlb = self.mem.tlb();
        self.mem.start_recording();
        // Ranges beyond the end of the input space are built from raw values: the input
        // address of the range start is valid, only the size runs past the end.
        let input = self.input(start.min((1 << format.input_bits()) - KIB4));
        let result = match op.kind {
            Kind::Map { replace } => {
                let mode = if replace {
                    MapMode::Replace
                } else {
                    MapMode::New
                };
                let mapping = Mapping {
                    input,
                    output: PhysAddr::new(output),
                    size: op.size,
                    attributes,
                };
                self.table.map(&mut self.mem, &mut tlb, mapping, mode)
            }
            Kind::Unmap => self.table.unmap(&mut self.mem, &mut tlb, input, op.size),
            Kind::Protect => {
                self.table
                    .protect(&mut self.mem, &mut tlb, input, op.size, attributes)
            }
        };
        let events = self.mem.take_events();
        self.mem.set_limit(usize::MAX);

        match (want, result) {
            (Ok(()), Ok(())) => {}
            (
                Ok(()),
                Err(Error {
                    reason: Reason::OutOfMemory { .. },
                    ..
                }),
            ) if op.frame_budget.is_some() => {
                prop_assert_eq!(self.mem.snapshot(), before_snapshot, "OOM changed the tree");
                prop_assert_eq!(self.mem.frames_in_use(), in_use, "OOM leaked frames");
                return Ok(());
            }
            (Err(reason), Err(error)) => {
                prop_assert_eq!(error.reason, reason, "{}", error);
                // The error names the first offending page, as the model sees it.
                let at = match reason {
                    Reason::AlreadyMapped => self.model.first_mapped(start, end),
                    Reason::NotMapped => self.model.first_unmapped(start, end),
                    _ => Some(input.as_u64()),
                };
                if let Some(at) = at {
                    let at = match reason {
                        Reason::AlreadyMapped | Reason::NotMapped => self.input(at).as_u64(),
                        _ => at,
                    };
                    prop_assert_eq!(
                        error.location,
                        Location::Input {
                            kind: F::Input::KIND,
                            address: at
                        }
                    );
                }
                prop_assert_eq!(
                    self.mem.snapshot(),
                    before_snapshot,
                    "failed op changed the tree"
                );
                prop_assert_eq!(self.mem.frames_in_use(), in_use, "failed op leaked frames");
                return Ok(());
            }
            (want, got) => {
                return Err(TestCaseError::fail(format!(
                    "{op:?}: expected {want:?}, got {got:?}"
                )))
            }
        }

        match op.kind {
            Kind::Map { .. } => self.model.map(start, end, output, attributes),
            Kind::Unmap => self.model.unmap(start, end),
            Kind::Protect => self.model.protect(start, end, attributes),
        }
        check_break_before_make(&events).map_err(TestCaseError::fail)?;
        self.check_invalidations(&events, &before_model, start, end)?;
        self.check_tree()
    }

    /// Every stale range was mapped before; every page whose translation changed was
    /// invalidated.
    fn check_invalidations(
        &self,
        events: &[Event],
        before: &Model,
        start: u64,
        end: u64,
    ) -> Result<(), TestCaseError> {
        let format = self.table.format();
        let mut invalidated: Vec<Interval> = Vec::new();
        for event in events {
            if let Event::Invalidate {
                start: at,
                size,
                stale,
            } = *event
            {
                let from = format
                    .input_offset(F::Input::new(at))
                    .ok_or_else(|| TestCaseError::fail("invalidation outside the space"))?;
                let to = from + size;
                match stale {
                    Stale::Leaf => prop_assert!(
                        before.first_unmapped(from, to).is_none(),
                        "leaf invalidation {from:#x}+{size:#x} covers unmapped pages"
                    ),
                    Stale::Table => prop_assert!(
                        before.first_mapped(from, to).is_some(),
                        "table invalidation {from:#x}+{size:#x} covers nothing mapped"
                    ),
                }
                invalidated.push(Interval {
                    start: from,
                    end: to,
                    output: 0,
                    attributes: Attributes::RAM_RO,
                });
            }
        }
        invalidated.sort_by_key(|i| i.start);
        let mut covered: Vec<(u64, u64)> = Vec::new();
        for i in invalidated {
            match covered.last_mut() {
                Some(last) if last.1 >= i.start => last.1 = last.1.max(i.end),
                _ => covered.push((i.start, i.end)),
            }
        }
        for piece in before.overlapping(start, end) {
            let from = piece.start.max(start);
            let to = piece.end.min(end);
            let out = piece.output + (from - piece.start);
            // The model after the operation is linear on the piece, so one sample decides
            // whether it changed.
            if self.model.translate(from) == Some((out, piece.attributes)) {
                continue;
            }
            prop_assert!(
                covered.iter().any(|&(a, b)| a <= from && to <= b),
                "changed range {from:#x}..{to:#x} not invalidated (invalidated: {covered:x?})"
            );
        }
        Ok(())
    }

    fn check_tree(&self) -> Result<(), TestCaseError> {
        let format = self.table.format();
        let stats = self.table.stats(&self.mem);
        prop_assert_eq!(stats.empty_tables, 0, "empty table left in the tree");
        prop_assert_eq!(
            stats.frames,
            self.mem.frames_in_use(),
            "frames in use != tree frames"
        );

        let mut leaves = Vec::new();
        // Parent entries already judged; the leaves below one entry share the verdict.
        let mut judged = None;
        for m in self.table.mappings(&self.mem) {
            let offset = format
                .input_offset(m.input)
                .expect("iterator gave a bad address");
            leaves.push(Interval {
                start: offset,
                end: offset + m.size,
                output: m.output.as_u64(),
                attributes: m.attributes,
            });
            // Maximal blocks: the leaf's parent entry could not have been one block.
            let level = leaf_level(m.size);
            if let Some(parent) = level.number().checked_sub(1).and_then(Level::new) {
                if parent >= format.start_level() && format.block_allowed(parent) {
                    let size = parent.entry_size();
                    let base = offset - offset % size;
                    if judged == Some((base, size)) {
                        continue;
                    }
                    judged = Some((base, size));
                    let uniform = self
                        .model
                        .overlapping(base, base + size)
                        .collect::<Vec<_>>();
                    let merged = merge(uniform);
                    let could_be_block = merged.len() == 1
                        && merged[0].start <= base
                        && merged[0].end >= base + size
                        && (merged[0].output + (base - merged[0].start)) % size == 0;
                    prop_assert!(
                        !could_be_block,
                        "{:?} at {offset:#x} is inside a range that fits a {parent:?} block",
                        m
                    );
                }
            }
        }
        prop_assert!(
            leaves.windows(2).all(|w| w[0].end <= w[1].start),
            "leaves overlap"
        );
        prop_assert_eq!(
            merge(leaves),
            self.model.merged(),
            "tree differs from the model"
        );

        // Spot translations: interval edges and middles.
        for piece in self.model.merged() {
            for at in [
                piece.start,
                piece.end - KIB4,
                (piece.start + (piece.end - piece.start) / 2) & !(KIB4 - 1),
            ] {
                let t = self.table.translate(&self.mem, self.input(at + 0x123));
                let want = self.model.translate(at).map(|(o, a)| (o + 0x123, a));
                prop_assert_eq!(t.map(|t| (t.output.as_u64(), t.attributes)), want);
            }
            if piece.start > 0 {
                let before = piece.start - KIB4;
                let t = self.table.translate(&self.mem, self.input(before));
                prop_assert_eq!(
                    t.map(|t| (t.output.as_u64(), t.attributes)),
                    self.model.translate(before)
                );
            }
        }
        Ok(())
    }
}

fn leaf_level(size: u64) -> Level {
    match size {
        KIB4 => Level::L3,
        MIB2 => Level::L2,
        GIB1 => Level::L1,
        _ => Level::L0,
    }
}

fn run<F: Format + Copy>(format: F, top: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let space = 1u64 << format.input_bits();
    let size = space.min(8 * GIB1);
    let window = Window {
        base: if top { space - size } else { 0 },
        size,
    };
    let mut mem = FakeMemory::new(PhysAddr::new(0x40_0000_0000), 1 << 14);
    let table = PageTable::new(format, &mut mem).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut h = Harness {
        table,
        mem,
        model: Model::new(),
        window,
    };
    for op in ops {
        let mut op = *op;
        // Keep ranges inside the window unless they are meant to run off its end.
        if window.size < 8 * GIB1 {
            op.start %= window.size;
        }
        h.apply(&op)?;
    }
    let stats = h.table.stats(&h.mem);
    let freed = h.table.destroy(&mut h.mem);
    prop_assert_eq!(freed, stats.frames);
    prop_assert_eq!(h.mem.frames_in_use(), 0, "frames leaked after destroy");
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(96),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stage2(bits in 32u32..=48, top in any::<bool>(), ops in prop::collection::vec(op(), 1..40)) {
        run(Stage2::new(bits).unwrap(), top, &ops)?;
    }

    #[test]
    fn stage1_el2(bits in 25u32..=48, top in any::<bool>(), ops in prop::collection::vec(op(), 1..40)) {
        run(Stage1El2::new(bits).unwrap(), top, &ops)?;
    }

    #[test]
    fn ept(two_mib in any::<bool>(), one_gib in any::<bool>(), top in any::<bool>(),
           ops in prop::collection::vec(op(), 1..40)) {
        run(Ept::new(LargePages { two_mib, one_gib }), top, &ops)?;
    }

    #[test]
    fn npt(one_gib in any::<bool>(), top in any::<bool>(), ops in prop::collection::vec(op(), 1..40)) {
        run(Npt::new(LargePages { two_mib: true, one_gib }), top, &ops)?;
    }

    #[test]
    fn host_tables(one_gib in any::<bool>(), top in any::<bool>(), ops in prop::collection::vec(op(), 1..40)) {
        run(HostTables::new(LargePages { two_mib: true, one_gib }), top, &ops)?;
    }
}

/// The input types are what the formats say they are.
#[test]
fn input_address_kinds() {
    assert_eq!(<Stage2 as Format>::Input::KIND, GuestPhysAddr::KIND);
    assert_eq!(<HostTables as Format>::Input::KIND, VirtAddr::KIND);
}
