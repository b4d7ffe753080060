//! Building a root cell's identity map of the first 4 GiB, in every format.
//!
//! Run with `cargo bench -p cellvisor-paging --bench map --features fake`. A plain `main`, no
//! benchmark framework: each figure is the median of [`REPETITIONS`] runs measured with
//! [`Instant`], each run on a fresh [`FakeMemory`] (creating it is not timed).
//!
//! # The map
//!
//! Mixed alignment, as a root cell's memory map has it: the calls, in order, are
//!
//! | input range (identity) | size | attributes | why this alignment |
//! |---|---|---|---|
//! | `0x0000_1000..0x0020_0000` | 2 MiB - 4 KiB | RAM rwx | head: page 0 stays unmapped, so 4 KiB pages up to the first 2 MiB boundary |
//! | `0x0020_0000..0x0100_0000` | 14 MiB | RAM rwx | 2 MiB aligned |
//! | `0x0100_0000..0x0120_0000` | 2 MiB | RAM r-- | firmware tables, 2 MiB aligned |
//! | `0x0120_0000..0x4000_0000` | 1006 MiB | RAM rwx | 2 MiB aligned, up to 1 GiB |
//! | `0x4000_0000..0x8000_0000` | 1 GiB | RAM rwx | one aligned 1 GiB |
//! | `0x8000_0000..0x1_0000_0000` | 2 GiB | RAM rwx | 2 GiB in one aligned call |
//! | `0x1_0000_0000` | 4 KiB | device rw- | interrupt controller |
//! | `0x1_0000_2000` | 8 KiB | device r-- | read-only status registers |
//! | `0x1_0001_0000` | 64 KiB | normal non-cacheable rw- | uncached shared-memory mailbox |
//! | `0x1_0010_0000` | 32 KiB | normal write-through rw- | frame-buffer window |
//!
//! The RAM covers `[0x1000, 0x1_0000_0000)` completely; the four 4 KiB-granular device pieces
//! sit right above it (with holes between them), so they share one level-3 table.
//!
//! # What is measured
//!
//! - `map`: the ten calls above on an empty tree;
//! - `unmap`: one call unmapping `[0x1000, end of the last device)`;
//! - `protect 1 GiB`: making `0x4000_0000..0x8000_0000` read-only;
//! - `translate`: the average of [`LOOKUPS`] lookups at pseudo-random mapped addresses;
//! - `destroy`: freeing the tree.
//!
//! For every format that allows 1 GiB blocks, it also checks that an aligned 1 GiB range on a
//! fresh tree costs exactly one level-1 descriptor and no table below level 1.

use cellvisor_paging::fake::FakeMemory;
use cellvisor_paging::{
    Access, Address, Attributes, Cacheability, Ept, Format, HostTables, LargePages, Level, MapMode,
    Mapping, MemoryType, NotLive, Npt, PageTable, PhysAddr, Stage1El2, Stage2, Stats,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

const KIB4: u64 = 4096;
const MIB2: u64 = 2 << 20;
const GIB1: u64 = 1 << 30;

/// Runs per figure; the median is reported.
const REPETITIONS: usize = 20;
/// Lookups per `translate` run.
const LOOKUPS: u64 = 1 << 16;
/// Frames of each fake memory: far more than any of these trees needs.
const FRAMES: usize = 4096;

const DEVICE_RO: Attributes = Attributes::new(Access::READ, MemoryType::Device);
const UNCACHED_RW: Attributes =
    Attributes::new(Access::RW, MemoryType::Normal(Cacheability::NonCacheable));
const WRITE_THROUGH_RW: Attributes =
    Attributes::new(Access::RW, MemoryType::Normal(Cacheability::WriteThrough));

/// The map: `(start, size, attributes)`, identity mapped, in call order.
const PIECES: [(u64, u64, Attributes); 10] = [
    (KIB4, MIB2 - KIB4, Attributes::RAM_RWX),
    (MIB2, 16 * (1 << 20) - MIB2, Attributes::RAM_RWX),
    (16 << 20, MIB2, Attributes::RAM_RO),
    (18 << 20, GIB1 - (18 << 20), Attributes::RAM_RWX),
    (GIB1, GIB1, Attributes::RAM_RWX),
    (2 * GIB1, 2 * GIB1, Attributes::RAM_RWX),
    (4 * GIB1, KIB4, Attributes::DEVICE_RW),
    (4 * GIB1 + 0x2000, 2 * KIB4, DEVICE_RO),
    (4 * GIB1 + 0x1_0000, 16 * KIB4, UNCACHED_RW),
    (4 * GIB1 + 0x10_0000, 8 * KIB4, WRITE_THROUGH_RW),
];

/// One end past the last piece: the end of the range `unmap` removes.
fn end() -> u64 {
    PIECES
        .iter()
        .map(|&(start, size, _)| start + size)
        .max()
        .unwrap_or(0)
}

/// One row of the result table.
struct Row {
    name: &'static str,
    calls: usize,
    stats: Stats,
    map: Duration,
    unmap: Duration,
    protect: Duration,
    /// All [`LOOKUPS`] lookups.
    translate: Duration,
    destroy: Duration,
    /// For formats with 1 GiB blocks: the frames of a fresh tree holding one aligned 1 GiB
    /// range, and how many of them are the root.
    one_gib: Option<(usize, usize)>,
}

fn fresh<F: Format + Copy>(format: F) -> (FakeMemory, PageTable<F>) {
    let mut mem = FakeMemory::new(PhysAddr::new(0x40_0000_0000), FRAMES);
    let table = PageTable::new(format, &mut mem).expect("creating an empty tree");
    (mem, table)
}

fn build<F: Format>(table: &mut PageTable<F>, mem: &mut FakeMemory) {
    for &(start, size, attributes) in &PIECES {
        let mapping = Mapping {
            input: F::Input::new(start),
            output: PhysAddr::new(start),
            size,
            attributes,
        };
        table
            .map(mem, &mut NotLive, mapping, MapMode::New)
            .expect("mapping a piece");
    }
}

/// A fresh tree with the whole map.
fn built<F: Format + Copy>(format: F) -> (FakeMemory, PageTable<F>) {
    let (mut mem, mut table) = fresh(format);
    build(&mut table, &mut mem);
    (mem, table)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// The median over [`REPETITIONS`] of `run`, which gets fresh state from `setup` and returns
/// the time of the part it measures.
fn measure<S>(mut setup: impl FnMut() -> S, mut run: impl FnMut(S) -> Duration) -> Duration {
    median((0..REPETITIONS).map(|_| run(setup())).collect())
}

/// Pseudo-random mapped addresses (a fixed linear congruential sequence over the pieces).
fn lookup_addresses() -> Vec<u64> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..LOOKUPS)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let (start, size, _) = PIECES[(state >> 60) as usize % PIECES.len()];
            start + (state >> 8) % size
        })
        .collect()
}

fn bench<F: Format + Copy>(name: &'static str, format: F) -> Row {
    // The tree is right: every piece translates to itself with its attributes.
    let (mem, table) = built(format);
    for &(start, size, attributes) in &PIECES {
        for at in [start, start + size / 2, start + size - 1] {
            let t = table
                .translate(&mem, F::Input::new(at))
                .expect("mapped address");
            assert_eq!((t.output.as_u64(), t.attributes), (at, attributes));
        }
    }
    let stats = table.stats(&mem);
    assert_eq!(stats.frames, mem.frames_in_use());

    let map = measure(
        || fresh(format),
        |(mut mem, mut table)| {
            let start = Instant::now();
            build(&mut table, &mut mem);
            let elapsed = start.elapsed();
            black_box(table.root());
            elapsed
        },
    );
    let unmap = measure(
        || built(format),
        |(mut mem, mut table)| {
            let start = Instant::now();
            table
                .unmap(&mut mem, &mut NotLive, F::Input::new(KIB4), end() - KIB4)
                .expect("unmapping everything");
            let elapsed = start.elapsed();
            assert_eq!(table.mappings(&mem).count(), 0);
            elapsed
        },
    );
    let protect = measure(
        || built(format),
        |(mut mem, mut table)| {
            let start = Instant::now();
            table
                .protect(
                    &mut mem,
                    &mut NotLive,
                    F::Input::new(GIB1),
                    GIB1,
                    Attributes::RAM_RO,
                )
                .expect("protecting 1 GiB");
            start.elapsed()
        },
    );
    let addresses = lookup_addresses();
    let translate = measure(
        || (),
        |()| {
            let start = Instant::now();
            for &at in &addresses {
                black_box(table.translate(&mem, F::Input::new(black_box(at))));
            }
            start.elapsed()
        },
    );
    let destroy = measure(
        || built(format),
        |(mut mem, table)| {
            let start = Instant::now();
            let freed = table.destroy(&mut mem);
            let elapsed = start.elapsed();
            assert_eq!(freed, stats.frames);
            assert_eq!(mem.frames_in_use(), 0);
            elapsed
        },
    );

    Row {
        name,
        calls: PIECES.len(),
        stats,
        map,
        unmap,
        protect,
        translate,
        destroy,
        one_gib: one_gib_block(format),
    }
}

/// For formats with 1 GiB blocks: an aligned 1 GiB range on a fresh tree is exactly one
/// level-1 descriptor, with no table below level 1. Returns the tree's frames and its root
/// frames.
fn one_gib_block<F: Format + Copy>(format: F) -> Option<(usize, usize)> {
    if !format.block_allowed(Level::L1) {
        return None;
    }
    let (mut mem, mut table) = fresh(format);
    let mapping = Mapping {
        input: F::Input::new(GIB1),
        output: PhysAddr::new(GIB1),
        size: GIB1,
        attributes: Attributes::RAM_RWX,
    };
    table
        .map(&mut mem, &mut NotLive, mapping, MapMode::New)
        .expect("mapping 1 GiB");
    let stats = table.stats(&mem);
    assert_eq!(stats.leaves[1], 1, "an aligned 1 GiB is one level-1 block");
    assert_eq!(stats.leaves, [0, 1, 0, 0], "and nothing else");
    // The root, plus the level-1 table when the walk starts at level 0; nothing else.
    let path = usize::from(format.start_level() == Level::L0);
    assert_eq!(stats.frames, format.root_frames() + path, "no extra frame");
    assert_eq!(
        stats.tables[2] + stats.tables[3],
        0,
        "no table below level 1"
    );
    Some((stats.frames, format.root_frames()))
}

fn micros(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e6)
}

fn main() {
    let no_1g = LargePages {
        two_mib: true,
        one_gib: false,
    };
    let rows = [
        bench("Stage2, 40-bit IPA", Stage2::new(40).expect("valid size")),
        bench(
            "Stage1El2, 48-bit VA",
            Stage1El2::new(48).expect("valid size"),
        ),
        bench("Ept, 2 MiB + 1 GiB", Ept::new(LargePages::ALL)),
        bench("Ept, 2 MiB only", Ept::new(no_1g)),
        bench("Npt, 2 MiB + 1 GiB", Npt::new(LargePages::ALL)),
        bench("Npt, 2 MiB only", Npt::new(no_1g)),
        bench(
            "HostTables, 2 MiB + 1 GiB",
            HostTables::new(LargePages::ALL),
        ),
    ];

    println!(
        "Identity map of [{:#x}, {:#x}) with mixed alignment: {} map calls; \
         median of {REPETITIONS} runs, translate averaged over {LOOKUPS} lookups.",
        KIB4,
        end(),
        PIECES.len()
    );
    println!();
    println!(
        "| format | map calls | table frames | leaves L1 / L2 / L3 | map (µs) | unmap all (µs) \
         | protect 1 GiB (µs) | translate (ns) | destroy (µs) |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        let [_, l1, l2, l3] = row.stats.leaves;
        println!(
            "| {} | {} | {} | {l1} / {l2} / {l3} | {} | {} | {} | {:.1} | {} |",
            row.name,
            row.calls,
            row.stats.frames,
            micros(row.map),
            micros(row.unmap),
            micros(row.protect),
            row.translate.as_secs_f64() * 1e9 / LOOKUPS as f64,
            micros(row.destroy),
        );
    }
    println!();
    for row in &rows {
        if let Some((frames, root)) = row.one_gib {
            println!(
                "{}: an aligned 1 GiB on a fresh tree is exactly one level-1 descriptor \
                 (leaves[1] == 1, no other leaf), {frames} frame(s): {root} root + {} level-1 \
                 table, no table below level 1",
                row.name,
                frames - root
            );
        }
    }
}
