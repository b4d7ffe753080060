//! Golden tests: known descriptors and register values for known inputs, one group per format.
//!
//! Every expected value below is an explicit literal composed by hand from the architecture
//! manuals, independently of the implementation; the comment next to it shows the fields it is
//! made of and where they come from. The descriptors are checked twice: by calling the
//! format's `encode_leaf` / `encode_table` / `decode` directly, and by mapping through the real
//! engine (`PageTable::map` on a `FakeMemory`) and reading the raw descriptor back at the
//! table and index the manual's walk selects.
//!
//! References (section titles are stable across revisions; numbers are given for the
//! revisions noted):
//!
//! - Arm ARM: Arm Architecture Reference Manual for A-profile, DDI 0487, chapter "The AArch64
//!   Virtual Memory System Architecture": "Translation table descriptor formats" (VMSAv8-64
//!   table, block and page descriptors, 4KB granule), "Memory access control" (stage 1
//!   AP[2:1] data access permissions, stage 2 S2AP, XN), "Memory region attributes" (stage 1
//!   AttrIndx/MAIR, stage 2 MemAttr when FEAT_S2FWB is disabled), "Concatenated translation
//!   tables" and the pseudocode `AArch64.S1StartLevel`, `AArch64.S2StartLevel` and
//!   `AArch64.S2InconsistentSL`; the register descriptions of VTCR_EL2, VTTBR_EL2, TCR_EL2 and
//!   MAIR_EL2.
//! - Intel SDM: Intel 64 and IA-32 Architectures Software Developer's Manual, Vol. 3C chapter
//!   "VMX Support for Address Translation", section "The Extended Page Table Mechanism (EPT)"
//!   (29.3 in the 2023+ numbering): Tables "Format of an EPT PML4 Entry", "... EPT PDPTE that
//!   Maps a 1-GByte Page", "... EPT PDE that Maps a 2-MByte Page", "... EPT Page-Table Entry
//!   that Maps a 4-KByte Page", the table-referencing variants, "EPT Misconfigurations", and
//!   "EPT and Memory Typing"; Vol. 3C "Extended-Page-Table Pointer (EPTP)" (Table "Format of
//!   Extended-Page-Table Pointer"). Vol. 3A chapter "Paging", section "4-Level Paging and
//!   5-Level Paging" (Tables "Format of a PML4 Entry (PML4E) that References a
//!   Page-Directory-Pointer Table", "... PDPTE that Maps a 1-GByte Page", "... PDE that Maps
//!   a 2-MByte Page", "... PTE that Maps a 4-KByte Page") and "Page Attribute Table (PAT)"
//!   (Tables "Memory Types That Can Be Encoded With PAT" and "Selection of PAT Entries with
//!   PAT, PCD, and PWT Flags").
//! - AMD APM: AMD64 Architecture Programmer's Manual Vol. 2, 5.3 "Long-Mode Page Translation",
//!   5.4 "Page-Translation-Table Entry Fields", 7.8 "Page-Attribute Table Mechanism", 15.25
//!   "Nested Paging" (15.25.5 "Nested Table Walk": nested-table accesses are user accesses,
//!   so nested entries need U/S = 1).

#![cfg(feature = "fake")]

use cellvisor_paging::fake::FakeMemory;
use cellvisor_paging::format::long_mode::PAT;
use cellvisor_paging::{
    Access, Attributes, Cacheability, ConfigError, Descriptor, Entry, Ept, Format, GuestPhysAddr,
    HostTables, LargePages, Level, MapMode, Mapping, MemoryType, NotLive, Npt, Operation, PaSize,
    PageTable, PhysAddr, PhysMemory, Reason, Stage1El2, Stage2, VirtAddr, MAIR_EL2,
};

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Physical address of the first frame of the fake memory that holds the tables.
const FAKE_BASE: u64 = 0x8000_0000;
/// Frames in the fake memory.
const FAKE_FRAMES: usize = 256;

/// Output-address bits \[47:12\] of every format's descriptors at the addresses these tests use.
const ADDRESS_47_12: u64 = 0x0000_ffff_ffff_f000;

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const KIB4: u64 = 4 << 10;

const DEVICE: MemoryType = MemoryType::Device;
const NC: MemoryType = MemoryType::Normal(Cacheability::NonCacheable);
const WT: MemoryType = MemoryType::Normal(Cacheability::WriteThrough);
const WB: MemoryType = MemoryType::Normal(Cacheability::WriteBack);

/// Every memory type.
const MEMORY_TYPES: [MemoryType; 4] = [DEVICE, NC, WT, WB];

/// Every combination of the three access rights.
fn every_access() -> [Access; 8] {
    [
        Access::empty(),
        Access::READ,
        Access::WRITE,
        Access::EXECUTE,
        Access::RW,
        Access::RX,
        Access::WRITE | Access::EXECUTE,
        Access::RWX,
    ]
}

fn fake() -> FakeMemory {
    FakeMemory::new(PhysAddr::new(FAKE_BASE), FAKE_FRAMES)
}

fn pa(raw: u64) -> PhysAddr {
    PhysAddr::new(raw)
}

fn gpa(raw: u64) -> GuestPhysAddr {
    GuestPhysAddr::new(raw)
}

fn va(raw: u64) -> VirtAddr {
    VirtAddr::new(raw)
}

fn attrs(access: Access, memory: MemoryType) -> Attributes {
    Attributes::new(access, memory)
}

/// A raw descriptor.
fn d(raw: u64) -> Descriptor {
    Descriptor::from_bits(raw)
}

fn level(n: u8) -> Level {
    Level::new(n).expect("level 0 to 3")
}

/// Maps through the engine as a table that is not live yet, failing the test on error.
fn map<F: Format>(
    table: &mut PageTable<F>,
    mem: &mut FakeMemory,
    input: F::Input,
    output: u64,
    size: u64,
    attributes: Attributes,
) {
    let mapping = Mapping {
        input,
        output: pa(output),
        size,
        attributes,
    };
    table
        .map(mem, &mut NotLive, mapping, MapMode::New)
        .unwrap_or_else(|e| panic!("{}: map {mapping:?}: {e}", F::NAME));
}

/// Walks from the root along `indices` (one hand-computed index per level, starting at the
/// format's start level), following the table descriptors found on the way, and returns the
/// raw descriptors read at every step; the last one is the descriptor at the last index.
fn walk<F: Format>(table: &PageTable<F>, mem: &FakeMemory, indices: &[usize]) -> Vec<u64> {
    let format = table.format();
    let mut lvl = format.start_level();
    let mut frame = table.root();
    let mut raw = Vec::new();
    for (step, &index) in indices.iter().enumerate() {
        let descriptor = mem.read_descriptor(frame, index);
        raw.push(descriptor.bits());
        if step + 1 == indices.len() {
            break;
        }
        match format.decode(lvl, descriptor) {
            Entry::Table(next) => frame = next,
            other => panic!(
                "{}: {lvl:?} index {index}: expected a table descriptor, found {other:?} \
                 ({descriptor:?})",
                F::NAME
            ),
        }
        lvl = lvl.next().expect("walk deeper than level 3");
    }
    raw
}

/// Checks a table descriptor read from the engine: exactly `flags` outside the address
/// field, and an address that is a frame of the fake memory.
fn assert_table_descriptor(raw: u64, flags: u64, what: &str) {
    assert_eq!(
        raw & !ADDRESS_47_12,
        flags,
        "{what}: table descriptor {raw:#018x} must carry exactly {flags:#x} besides the address"
    );
    let next = raw & ADDRESS_47_12;
    assert!(
        (FAKE_BASE..FAKE_BASE + FAKE_FRAMES as u64 * KIB4).contains(&next),
        "{what}: table descriptor {raw:#018x} points outside the table memory"
    );
}

/// `decode(encode(x)) == x` at levels 1 to 3 for every attribute set the format accepts,
/// and rejection is consistent: exactly the `accepted` access sets pass `check_attributes`.
fn assert_round_trip<F: Format>(format: &F, accepted: &[Access]) {
    for access in every_access() {
        for memory in MEMORY_TYPES {
            let attributes = attrs(access, memory);
            let ok = format.check_attributes(attributes).is_ok();
            assert_eq!(
                ok,
                accepted.contains(&access),
                "{}: check_attributes({attributes})",
                F::NAME
            );
            if !ok {
                continue;
            }
            for (lvl, output) in [
                (Level::L1, 0x0000_0040_0000_0000),
                (Level::L1, 0x0000_7fff_c000_0000),
                (Level::L2, 0x0000_0000_4020_0000),
                (Level::L3, 0x0000_0000_4000_1000),
                (Level::L3, 0x0000_ffff_ffff_f000),
            ] {
                if lvl != Level::L3 && !format.block_allowed(lvl) {
                    continue;
                }
                let descriptor = format.encode_leaf(lvl, pa(output), attributes);
                assert_eq!(
                    format.decode(lvl, descriptor),
                    Entry::Leaf {
                        output: pa(output),
                        attributes
                    },
                    "{}: decode(encode({lvl:?}, {output:#x}, {attributes})) from {descriptor:?}",
                    F::NAME
                );
            }
        }
    }
    for (lvl, table) in [(Level::L0, 0x8000_1000), (Level::L1, 0x0000_ffff_ffff_f000)] {
        let descriptor = format.encode_table(lvl, pa(table));
        assert_eq!(
            format.decode(lvl, descriptor),
            Entry::Table(pa(table)),
            "{}: decode(encode_table({lvl:?}, {table:#x}))",
            F::NAME
        );
    }
}

/// A 1 GiB range with 1 GiB aligned input and output costs exactly one leaf descriptor, at
/// level 1, and no table below it.
fn assert_one_gib_is_one_leaf<F: Format>(format: F, input: F::Input, frames: usize) {
    let mut mem = fake();
    let mut table = PageTable::new(format, &mut mem).expect("root");
    map(
        &mut table,
        &mut mem,
        input,
        0x0000_0001_4000_0000,
        GIB,
        Attributes::RAM_RWX,
    );
    let stats = table.stats(&mem);
    assert_eq!(stats.leaves, [0, 1, 0, 0], "{}: one level-1 leaf", F::NAME);
    assert_eq!(stats.frames, frames, "{}: table frames", F::NAME);
    let t = table.translate(&mem, input).expect("mapped");
    assert_eq!(
        (t.level, t.size, t.output),
        (Level::L1, GIB, pa(0x0000_0001_4000_0000))
    );
}

#[test]
fn a_one_gib_aligned_range_costs_exactly_one_leaf_in_every_format_with_1_gib_blocks() {
    // 40-bit IPA: level 1 start with 2 concatenated root tables, the block sits in the root.
    assert_one_gib_is_one_leaf(Stage2::new(40).unwrap(), gpa(0x4000_0000), 2);
    // 48-bit IPA: level 0 start; root + one level-1 table.
    assert_one_gib_is_one_leaf(Stage2::new(48).unwrap(), gpa(0x0000_ffff_c000_0000), 2);
    // 39-bit VA: level 1 start, the block sits in the root.
    assert_one_gib_is_one_leaf(Stage1El2::new(39).unwrap(), va(0x4000_0000), 1);
    // 48-bit VA: level 0 start; root + one level-1 table.
    assert_one_gib_is_one_leaf(Stage1El2::new(48).unwrap(), va(0x0000_0080_0000_0000), 2);
    // x86: PML4 + PDPT.
    assert_one_gib_is_one_leaf(Ept::new(LargePages::ALL), gpa(0x4000_0000), 2);
    assert_one_gib_is_one_leaf(Npt::new(LargePages::ALL), gpa(0x4000_0000), 2);
    assert_one_gib_is_one_leaf(HostTables::new(LargePages::ALL), va(0x4000_0000), 2);
    assert_one_gib_is_one_leaf(
        HostTables::new(LargePages::ALL),
        va(0xffff_ffff_c000_0000),
        2,
    );
}

// ---------------------------------------------------------------------------------------------
// Arm stage 2 (VMSAv8-64, 4KB granule, FEAT_S2FWB disabled)
// ---------------------------------------------------------------------------------------------
//
// Arm ARM "Translation table descriptor formats", stage 2 Block and Page descriptors:
//   bits[1:0]   0b01 block (levels 1, 2), 0b11 page (level 3) or table (levels 0-2)
//   bits[5:2]   MemAttr[3:0]  (FEAT_S2FWB disabled, "Stage 2 memory type and Cacheability
//               attributes"): MemAttr[3:2] = 0b00 Device with MemAttr[1:0] = 0b00 nGnRnE,
//               0b01 nGnRE, 0b10 nGRE, 0b11 GRE; otherwise MemAttr[3:2] is the Outer and
//               MemAttr[1:0] the Inner attribute, 0b01 Non-cacheable, 0b10 Write-Through,
//               0b11 Write-Back
//   bits[7:6]   S2AP ("Stage 2 data access permissions"): 0b00 none, 0b01 read-only,
//               0b10 write-only, 0b11 read/write
//   bits[9:8]   SH: 0b11 Inner Shareable
//   bit 10      AF, Access Flag
//   bits[47:n]  output address (n = 30, 21, 12 at levels 1, 2, 3)
//   bit 54      XN (XN[1] with FEAT_XNX; XN[0], bit 53, stays 0): 1 = execute-never
// Table descriptor: bits[47:12] next-level table address, bits[1:0] = 0b11.

mod stage2 {
    use super::*;

    #[test]
    fn leaf_descriptors_one_per_level() {
        let s2 = Stage2::new(40).unwrap();
        let rwx = Attributes::RAM_RWX;
        // 4 KiB page: 0x8_0000_1000 | AF(1<<10) | SH=0b11<<8 | S2AP=0b11<<6
        //   | MemAttr=0b1111<<2 | page 0b11
        assert_eq!(
            s2.encode_leaf(Level::L3, pa(0x8_0000_1000), rwx).bits(),
            0x0000_0008_0000_17ff
        );
        // 2 MiB block: 0x8_0020_0000 | AF | SH=0b11<<8 | S2AP=0b11<<6 | MemAttr=0b1111<<2
        //   | block 0b01
        assert_eq!(
            s2.encode_leaf(Level::L2, pa(0x8_0020_0000), rwx).bits(),
            0x0000_0008_0020_07fd
        );
        // 1 GiB block: 0x8_4000_0000 | AF | SH=0b11<<8 | S2AP=0b11<<6 | MemAttr=0b1111<<2
        //   | block 0b01
        assert_eq!(
            s2.encode_leaf(Level::L1, pa(0x8_4000_0000), rwx).bits(),
            0x0000_0008_4000_07fd
        );
    }

    #[test]
    fn table_descriptor() {
        let s2 = Stage2::new(40).unwrap();
        // 0x8000_3000 | table 0b11
        for lvl in [Level::L0, Level::L1, Level::L2] {
            let d = s2.encode_table(lvl, pa(0x8000_3000));
            assert_eq!(d.bits(), 0x0000_0000_8000_3003);
            assert_eq!(s2.decode(lvl, d), Entry::Table(pa(0x8000_3000)));
        }
        // Highest 48-bit table address: bits[47:12] all ones | 0b11.
        assert_eq!(
            s2.encode_table(Level::L1, pa(0x0000_ffff_ffff_f000)).bits(),
            0x0000_ffff_ffff_f003
        );
    }

    #[test]
    fn permissions() {
        let s2 = Stage2::new(40).unwrap();
        let out = pa(0x8_0020_0000);
        // 2 MiB Write-Back blocks: 0x8_0020_0000 | AF(0x400) | SH(0x300) | MemAttr 0b1111<<2
        //   (0x3c) | block 0b01 = 0x8_0020_073d, plus S2AP<<6 and XN(1<<54) as below.
        let cases = [
            // S2AP=0b00, XN
            (Access::empty(), 0x0040_0008_0020_073d),
            // S2AP=0b01 (read-only) = 0x40, XN
            (Access::READ, 0x0040_0008_0020_077d),
            // S2AP=0b10 (write-only) = 0x80, XN
            (Access::WRITE, 0x0040_0008_0020_07bd),
            // S2AP=0b00, XN clear (execute-only)
            (Access::EXECUTE, 0x0000_0008_0020_073d),
            // S2AP=0b11 (read/write) = 0xc0, XN
            (Access::RW, 0x0040_0008_0020_07fd),
            // S2AP=0b01, XN clear
            (Access::RX, 0x0000_0008_0020_077d),
            // S2AP=0b10, XN clear
            (Access::WRITE | Access::EXECUTE, 0x0000_0008_0020_07bd),
            // S2AP=0b11, XN clear
            (Access::RWX, 0x0000_0008_0020_07fd),
        ];
        for (access, expected) in cases {
            let a = attrs(access, WB);
            assert!(s2.check_attributes(a).is_ok(), "{a}");
            let d = s2.encode_leaf(Level::L2, out, a);
            assert_eq!(d.bits(), expected, "{a}: {d:?}");
            assert_eq!(
                s2.decode(Level::L2, d),
                Entry::Leaf {
                    output: out,
                    attributes: a
                }
            );
        }
    }

    #[test]
    fn memory_types() {
        let s2 = Stage2::new(40).unwrap();
        let out = pa(0x8_0000_5000);
        // 4 KiB read-write pages: 0x8_0000_5000 | XN(1<<54) | AF(0x400) | SH(0x300)
        //   | S2AP=0b11<<6 (0xc0) | page 0b11 = 0x0040_0008_0000_57c3, plus MemAttr<<2:
        let cases = [
            // MemAttr 0b0001: Device-nGnRE -> 0x04
            (DEVICE, 0x0040_0008_0000_57c7),
            // MemAttr 0b0101: Normal, Outer NC (0b01), Inner NC (0b01) -> 0x14
            (NC, 0x0040_0008_0000_57d7),
            // MemAttr 0b1010: Normal, Outer WT (0b10), Inner WT (0b10) -> 0x28
            (WT, 0x0040_0008_0000_57eb),
            // MemAttr 0b1111: Normal, Outer WB (0b11), Inner WB (0b11) -> 0x3c
            (WB, 0x0040_0008_0000_57ff),
        ];
        for (memory, expected) in cases {
            let a = attrs(Access::RW, memory);
            let d = s2.encode_leaf(Level::L3, out, a);
            assert_eq!(d.bits(), expected, "{a}: {d:?}");
            assert_eq!(
                s2.decode(Level::L3, d),
                Entry::Leaf {
                    output: out,
                    attributes: a
                }
            );
        }
    }

    #[test]
    fn hand_written_descriptors_decode() {
        let s2 = Stage2::new(40).unwrap();
        // 0x09000000 | XN | AF | SH | S2AP=0b11 | MemAttr=0b0001 (Device-nGnRE) | block
        assert_eq!(
            s2.decode(Level::L2, d(0x0040_0000_0900_07c5)),
            Entry::Leaf {
                output: pa(0x0900_0000),
                attributes: Attributes::DEVICE_RW
            }
        );
        // 0x8_0000_0000 | AF | SH | S2AP=0b01 | MemAttr=0b1111 | block, XN -> read-only RAM
        assert_eq!(
            s2.decode(Level::L1, d(0x0040_0008_0000_077d)),
            Entry::Leaf {
                output: pa(0x8_0000_0000),
                attributes: Attributes::RAM_RO
            }
        );
        // Device-nGnRnE (MemAttr 0b0000), which the format never writes, is still Device.
        assert_eq!(
            s2.decode(Level::L3, d(0x0040_0000_0900_07c3)),
            Entry::Leaf {
                output: pa(0x0900_0000),
                attributes: Attributes::DEVICE_RW
            }
        );
    }

    #[test]
    fn invalid_and_reserved_encodings() {
        let s2 = Stage2::new(48).unwrap();
        // Bit 0 clear: invalid, whatever the rest holds.
        assert_eq!(
            s2.decode(Level::L3, d(0x0000_0008_0000_17fe)),
            Entry::Invalid
        );
        assert_eq!(
            s2.decode(Level::L1, d(0x0000_0008_4000_07fc)),
            Entry::Invalid
        );
        // bits[1:0] = 0b01 at level 3 is reserved ("treated as invalid").
        assert_eq!(
            s2.decode(Level::L3, d(0x0000_0008_0000_17fd)),
            Entry::Invalid
        );
        // 4KB granule: no block descriptor at level 0 (a level-0 0b01 is invalid).
        assert_eq!(
            s2.decode(Level::L0, d(0x0000_0000_0000_07fd)),
            Entry::Invalid
        );
    }

    #[test]
    fn decode_of_encode_is_identity() {
        // Stage 2 encodes every permission combination (S2AP and XN are independent).
        assert_round_trip(&Stage2::new(40).unwrap(), &every_access());
        assert_round_trip(&Stage2::new(48).unwrap(), &every_access());
    }

    #[test]
    fn descriptors_in_the_tables_the_walk_selects() {
        let mut mem = fake();
        // 40-bit IPA: start level 1, 2 concatenated root tables (1024 entries, IPA[39:30]).
        let mut t = PageTable::new(Stage2::new(40).unwrap(), &mut mem).unwrap();
        // 1 GiB block at IPA 0x4000_0000: root index 0x4000_0000 >> 30 = 1.
        map(
            &mut t,
            &mut mem,
            gpa(0x4000_0000),
            0x8_0000_0000,
            GIB,
            Attributes::RAM_RWX,
        );
        // 2 MiB Device block at IPA 0x80_0020_0000: root index 0x80_0020_0000 >> 30 = 512
        // (the first entry of the second concatenated table), level-2 index
        // (0x80_0020_0000 >> 21) & 0x1ff = 1.
        map(
            &mut t,
            &mut mem,
            gpa(0x80_0020_0000),
            0x0900_0000,
            MIB2,
            Attributes::DEVICE_RW,
        );
        // 4 KiB read-only executable non-cacheable page at IPA 0x1000: indices 0, 0, 1.
        map(
            &mut t,
            &mut mem,
            gpa(0x1000),
            0x8_0000_1000,
            KIB4,
            attrs(Access::RX, NC),
        );

        // 0x8_0000_0000 | AF | SH=0b11<<8 | S2AP=0b11<<6 | MemAttr=0b1111<<2 | block 0b01
        assert_eq!(walk(&t, &mem, &[1]), [0x0000_0008_0000_07fd]);

        let path = walk(&t, &mem, &[512, 1]);
        assert_table_descriptor(path[0], 0b11, "stage 2 root[512]");
        // 0x0900_0000 | XN(1<<54) | AF | SH=0b11<<8 | S2AP=0b11<<6 | MemAttr=0b0001<<2
        //   | block 0b01
        assert_eq!(path[1], 0x0040_0000_0900_07c5);
        // Root entry 512 lives at offset 0 of the second 4 KiB root frame.
        let second_frame = pa(t.root().as_u64() + 0x1000);
        assert_eq!(mem.read_descriptor(second_frame, 0).bits(), path[0]);

        let path = walk(&t, &mem, &[0, 0, 1]);
        assert_table_descriptor(path[0], 0b11, "stage 2 root[0]");
        assert_table_descriptor(path[1], 0b11, "stage 2 L2[0]");
        // 0x8_0000_1000 | AF | SH=0b11<<8 | S2AP=0b01<<6 | MemAttr=0b0101<<2 | page 0b11
        assert_eq!(path[2], 0x0000_0008_0000_1757);

        let stats = t.stats(&mem);
        assert_eq!(stats.leaves, [0, 1, 1, 1]);
        // 2 root frames + level-2 table under root[0] + level-3 table + level-2 table under
        // root[512].
        assert_eq!(stats.frames, 5);
        assert_eq!(
            t.mappings(&mem).collect::<Vec<_>>(),
            [
                Mapping {
                    input: gpa(0x1000),
                    output: pa(0x8_0000_1000),
                    size: KIB4,
                    attributes: attrs(Access::RX, NC)
                },
                Mapping {
                    input: gpa(0x4000_0000),
                    output: pa(0x8_0000_0000),
                    size: GIB,
                    attributes: Attributes::RAM_RWX
                },
                Mapping {
                    input: gpa(0x80_0020_0000),
                    output: pa(0x0900_0000),
                    size: MIB2,
                    attributes: Attributes::DEVICE_RW
                },
            ]
        );
    }

    #[test]
    fn level_2_start_maps_a_gib_as_512_blocks_in_the_concatenated_root() {
        let mut mem = fake();
        // 32-bit IPA: start level 2 with 4 concatenated tables (2048 entries, IPA[31:21]).
        let mut t = PageTable::new(Stage2::new(32).unwrap(), &mut mem).unwrap();
        map(
            &mut t,
            &mut mem,
            gpa(0xc000_0000),
            0x8_0000_0000,
            GIB,
            Attributes::RAM_RWX,
        );
        // IPA 0xc000_0000 >> 21 = 1536: entries 1536..=2047, i.e. all of the fourth frame.
        let fourth = pa(t.root().as_u64() + 0x3000);
        // 0x8_0000_0000 | AF | SH | S2AP=0b11 | MemAttr=0b1111 | block 0b01
        assert_eq!(mem.read_descriptor(fourth, 0).bits(), 0x0000_0008_0000_07fd);
        assert_eq!(walk(&t, &mem, &[1536]), [0x0000_0008_0000_07fd]);
        // Entry 2047: 0x8_0000_0000 + 511 * 2 MiB = 0x8_3fe0_0000 | 0x7fd
        assert_eq!(
            mem.read_descriptor(fourth, 511).bits(),
            0x0000_0008_3fe0_07fd
        );
        assert_eq!(walk(&t, &mem, &[2047]), [0x0000_0008_3fe0_07fd]);
        assert_eq!(mem.read_descriptor(t.root(), 1535).bits(), 0);
        let stats = t.stats(&mem);
        assert_eq!(stats.leaves, [0, 0, 512, 0]);
        assert_eq!(stats.frames, 4, "no table beyond the concatenated root");
    }

    #[test]
    fn level_0_start_walk() {
        let mut mem = fake();
        // 48-bit IPA: start level 0, one root table (IPA[47:39]).
        let mut t = PageTable::new(Stage2::new(48).unwrap(), &mut mem).unwrap();
        // IPA 0xffff_ffe0_0000: level-0 index 511, level-1 index 511, level-2 index 511.
        map(
            &mut t,
            &mut mem,
            gpa(0x0000_ffff_ffe0_0000),
            0x0000_ffff_ffe0_0000,
            MIB2,
            Attributes::RAM_RW,
        );
        let path = walk(&t, &mem, &[511, 511, 511]);
        assert_table_descriptor(path[0], 0b11, "stage 2 L0[511]");
        assert_table_descriptor(path[1], 0b11, "stage 2 L1[511]");
        // 0xffff_ffe0_0000 | XN | AF | SH | S2AP=0b11 | MemAttr=0b1111 | block 0b01
        assert_eq!(path[2], 0x0040_ffff_ffe0_07fd);
    }

    /// Arm ARM "Concatenated translation tables" and `AArch64.S2InconsistentSL`: with a 4KB
    /// granule a stage 2 walk starting at level L resolves IPA bits [s+8+c : s] at the first
    /// lookup, where s = 21, 30, 39 for L = 2, 1, 0 and up to 2^c = 16 tables are
    /// concatenated (c <= 4); the minimum input size for level L is s + 1 (so that the
    /// initial level resolves at least one bit). Starting as low as possible (fewest
    /// lookups): level 2 for 32..=34 bits (s + 9 + 4 = 34), level 1 for 35..=43 bits
    /// (30 + 13 = 43), level 0 for 44..=48 bits. Root entries are 2^(bits - s), tables
    /// max(1, entries / 512).
    #[test]
    fn start_level_and_concatenated_root_tables_for_every_ipa_size() {
        // (IPA bits, start level, root entries, concatenated tables, VTCR_EL2.SL0)
        let table: [(u32, u8, usize, usize, u8); 17] = [
            (32, 2, 2048, 4, 0b00),  // 2^(32-21) = 2048 entries
            (33, 2, 4096, 8, 0b00),  // 2^12
            (34, 2, 8192, 16, 0b00), // 2^13: the 16-table maximum
            (35, 1, 32, 1, 0b01),    // 2^(35-30); 35 > 34 needs level 1
            (36, 1, 64, 1, 0b01),
            (37, 1, 128, 1, 0b01),
            (38, 1, 256, 1, 0b01),
            (39, 1, 512, 1, 0b01),
            (40, 1, 1024, 2, 0b01),
            (41, 1, 2048, 4, 0b01),
            (42, 1, 4096, 8, 0b01),
            (43, 1, 8192, 16, 0b01),
            (44, 0, 32, 1, 0b10), // 2^(44-39); 44 > 43 needs level 0
            (45, 0, 64, 1, 0b10),
            (46, 0, 128, 1, 0b10),
            (47, 0, 256, 1, 0b10),
            (48, 0, 512, 1, 0b10),
        ];
        assert_eq!(cellvisor_paging::format::stage2::MAX_CONCATENATED, 16);
        for (bits, start, entries, tables, sl0) in table {
            let s2 = Stage2::new(bits).unwrap();
            assert_eq!(s2.input_bits(), bits);
            assert_eq!(s2.start_level(), level(start), "{bits}-bit IPA start level");
            assert_eq!(s2.root_entries(), entries, "{bits}-bit IPA root entries");
            assert_eq!(
                s2.concatenated_tables(),
                tables,
                "{bits}-bit IPA root tables"
            );
            assert_eq!(s2.root_frames(), tables);
            let vtcr = s2.vtcr(PaSize::Bits48, false).unwrap();
            assert_eq!(vtcr.sl0(), sl0, "{bits}-bit IPA VTCR_EL2.SL0");
            assert_eq!(
                u32::from(vtcr.t0sz()),
                64 - bits,
                "{bits}-bit IPA VTCR_EL2.T0SZ"
            );

            // The engine allocates exactly the concatenated root, aligned to its size.
            let mut mem = fake();
            let t = PageTable::new(s2, &mut mem).unwrap();
            assert_eq!(mem.frames_in_use(), tables);
            assert!(t.root().is_aligned(tables as u64 * KIB4));
            let stats = t.stats(&mem);
            assert_eq!(stats.frames, tables);
            let mut per_level = [0; 4];
            per_level[start as usize] = 1;
            assert_eq!(stats.tables, per_level);
            // The root covers the whole IPA space and the VTTBR accepts it.
            assert!(s2.vttbr(t.root(), 1, false).is_ok());
        }
        for bits in [0, 25, 31, 49, 52, 64] {
            assert_eq!(
                Stage2::new(bits),
                Err(ConfigError::InputSize {
                    bits,
                    min: 32,
                    max: 48
                })
            );
        }
    }

    // VTCR_EL2 (Arm ARM register description): T0SZ[5:0] = 64 - IPA bits; SL0[7:6];
    // IRGN0[9:8] = 0b01 (Normal Inner WB RA WA); ORGN0[11:10] = 0b01 (Outer WB RA WA);
    // SH0[13:12] = 0b11 (Inner Shareable); TG0[15:14] = 0b00 (4KB); PS[18:16] (0b000 32,
    // 0b001 36, 0b010 40, 0b011 42, 0b100 44, 0b101 48 bits); VS[19] (1 = 16-bit VMID);
    // HA[21] = HD[22] = 0; bit 31 RES1.
    #[test]
    fn vtcr_el2_values() {
        // 40-bit IPA, PS = 40 bits, 8-bit VMID:
        // T0SZ=24 (0x18) | SL0=0b01<<6 (0x40) | IRGN0=0b01<<8 (0x100) | ORGN0=0b01<<10 (0x400)
        //   | SH0=0b11<<12 (0x3000) | TG0=0 | PS=0b010<<16 (0x2_0000) | VS=0 | RES1 1<<31
        let v = Stage2::new(40)
            .unwrap()
            .vtcr(PaSize::Bits40, false)
            .unwrap();
        assert_eq!(v.bits(), 0x8002_3558);
        assert_eq!((v.t0sz(), v.sl0(), v.ps()), (24, 0b01, 0b010));

        // 48-bit IPA, PS = 48 bits, 16-bit VMID:
        // T0SZ=16 (0x10) | SL0=0b10<<6 (0x80) | 0x3500 | PS=0b101<<16 (0x5_0000)
        //   | VS=1<<19 (0x8_0000) | RES1 1<<31
        let v = Stage2::new(48).unwrap().vtcr(PaSize::Bits48, true).unwrap();
        assert_eq!(v.bits(), 0x800d_3590);
        assert_eq!((v.t0sz(), v.sl0(), v.ps()), (16, 0b10, 0b101));

        // 32-bit IPA, PS = 32 bits, 8-bit VMID:
        // T0SZ=32 (0x20) | SL0=0b00 | 0x3500 | PS=0b000 | RES1 1<<31
        let v = Stage2::new(32)
            .unwrap()
            .vtcr(PaSize::Bits32, false)
            .unwrap();
        assert_eq!(v.bits(), 0x8000_3520);
        assert_eq!((v.t0sz(), v.sl0(), v.ps()), (32, 0b00, 0b000));

        // 44-bit IPA, PS = 44 bits, 16-bit VMID:
        // T0SZ=20 (0x14) | SL0=0b10<<6 (0x80) | 0x3500 | PS=0b100<<16 (0x4_0000) | VS | RES1
        let v = Stage2::new(44).unwrap().vtcr(PaSize::Bits44, true).unwrap();
        assert_eq!(v.bits(), 0x800c_3594);

        // 36-bit IPA in a 42-bit PA space: T0SZ=28 (0x1c) | SL0=0b01<<6 (0x40) | 0x3500
        //   | PS=0b011<<16 (0x3_0000) | RES1
        let v = Stage2::new(36)
            .unwrap()
            .vtcr(PaSize::Bits42, false)
            .unwrap();
        assert_eq!(v.bits(), 0x8003_355c);
    }

    #[test]
    fn vtcr_el2_rejects_an_ipa_larger_than_the_pa_size() {
        // VTCR_EL2: an IPA size larger than PS is not allowed (it would be an Address size
        // fault on every access above the PA size).
        assert_eq!(
            Stage2::new(40).unwrap().vtcr(PaSize::Bits36, false),
            Err(ConfigError::InputLargerThanPhysical {
                input: 40,
                physical: 36
            })
        );
        assert_eq!(
            Stage2::new(48).unwrap().vtcr(PaSize::Bits44, true),
            Err(ConfigError::InputLargerThanPhysical {
                input: 48,
                physical: 44
            })
        );
        assert_eq!(
            Stage2::new(33).unwrap().vtcr(PaSize::Bits32, false),
            Err(ConfigError::InputLargerThanPhysical {
                input: 33,
                physical: 32
            })
        );
        // Equal sizes are fine.
        assert!(Stage2::new(36).unwrap().vtcr(PaSize::Bits36, false).is_ok());
    }

    #[test]
    fn pa_size_field_encoding() {
        // ID_AA64MMFR0_EL1.PARange / VTCR_EL2.PS / TCR_EL2.PS.
        for (size, bits, field) in [
            (PaSize::Bits32, 32, 0b000),
            (PaSize::Bits36, 36, 0b001),
            (PaSize::Bits40, 40, 0b010),
            (PaSize::Bits42, 42, 0b011),
            (PaSize::Bits44, 44, 0b100),
            (PaSize::Bits48, 48, 0b101),
        ] {
            assert_eq!((size.bits(), size.field()), (bits, field));
            assert_eq!(PaSize::from_parange(field as u8), Some(size));
        }
        // PARange 0b110 is 52 bits; without FEAT_LPA2 descriptors it is capped at 48.
        assert_eq!(PaSize::from_parange(0b110), Some(PaSize::Bits48));
        assert_eq!(PaSize::from_parange(0b111), None);
    }

    // VTTBR_EL2 (Arm ARM register description): VMID[63:48] (bits [63:56] RES0 with an
    // 8-bit VMID), BADDR[47:1] with bits [x-1:1] RES0 where 2^x is the size of the
    // (concatenated) initial-level table, CnP[0].
    #[test]
    fn vttbr_el2_values() {
        // 40-bit IPA: 2 concatenated tables = 8 KiB, so x = 13.
        let s2 = Stage2::new(40).unwrap();
        // VMID 5 << 48 | BADDR 0x8000_0000
        let v = s2.vttbr(pa(0x8000_0000), 5, false).unwrap();
        assert_eq!(v.bits(), 0x0005_0000_8000_0000);
        assert_eq!((v.baddr(), v.vmid()), (pa(0x8000_0000), 5));
        // VMID 0xff << 48 | 0x8000_2000 (8 KiB aligned)
        let v = s2.vttbr(pa(0x8000_2000), 0xff, false).unwrap();
        assert_eq!(v.bits(), 0x00ff_0000_8000_2000);
        // 16-bit VMID 0x1ff << 48 | 0x8000_0000
        let v = s2.vttbr(pa(0x8000_0000), 0x1ff, true).unwrap();
        assert_eq!(v.bits(), 0x01ff_0000_8000_0000);
        assert_eq!(v.vmid(), 0x1ff);
        // 16-bit VMID 0xffff << 48 | highest 8 KiB aligned 48-bit address 0xffff_ffff_e000
        let v = s2.vttbr(pa(0x0000_ffff_ffff_e000), 0xffff, true).unwrap();
        assert_eq!(v.bits(), 0xffff_ffff_ffff_e000);
        assert_eq!((v.baddr(), v.vmid()), (pa(0x0000_ffff_ffff_e000), 0xffff));

        // 48-bit IPA, one 4 KiB level-0 table: x = 12.
        let v = Stage2::new(48)
            .unwrap()
            .vttbr(pa(0x8000_1000), 1, false)
            .unwrap();
        assert_eq!(v.bits(), 0x0001_0000_8000_1000);
    }

    #[test]
    fn vttbr_el2_rejects_wide_vmids_and_misaligned_roots() {
        let s2 = Stage2::new(40).unwrap();
        // Without FEAT_VMID16 / VTCR_EL2.VS = 0 the VMID is 8 bits.
        assert_eq!(
            s2.vttbr(pa(0x8000_0000), 0x100, false),
            Err(ConfigError::VmidTooWide { vmid: 0x100 })
        );
        assert_eq!(
            s2.vttbr(pa(0x8000_0000), 0xffff, false),
            Err(ConfigError::VmidTooWide { vmid: 0xffff })
        );
        // 2 concatenated tables must be 8 KiB aligned: 0x8000_1000 is only 4 KiB aligned.
        assert_eq!(
            s2.vttbr(pa(0x8000_1000), 1, false),
            Err(ConfigError::UnalignedRoot(pa(0x8000_1000)))
        );
        // 43-bit IPA: 16 tables = 64 KiB alignment.
        let s2 = Stage2::new(43).unwrap();
        assert!(s2.vttbr(pa(0x8001_0000), 1, false).is_ok());
        assert_eq!(
            s2.vttbr(pa(0x8000_8000), 1, false),
            Err(ConfigError::UnalignedRoot(pa(0x8000_8000)))
        );
        // 32-bit IPA: 4 tables = 16 KiB alignment.
        let s2 = Stage2::new(32).unwrap();
        assert!(s2.vttbr(pa(0x8000_4000), 1, false).is_ok());
        assert_eq!(
            s2.vttbr(pa(0x8000_2000), 1, false),
            Err(ConfigError::UnalignedRoot(pa(0x8000_2000)))
        );
        // A single table is 4 KiB aligned; a BADDR above bit 47 does not fit.
        let s2 = Stage2::new(39).unwrap();
        assert_eq!(
            s2.vttbr(pa(0x8000_0800), 1, false),
            Err(ConfigError::UnalignedRoot(pa(0x8000_0800)))
        );
        assert_eq!(
            s2.vttbr(pa(0x0001_0000_0000_0000), 1, false),
            Err(ConfigError::UnalignedRoot(pa(0x0001_0000_0000_0000)))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Arm EL2 stage 1 (VMSAv8-64, 4KB granule, HCR_EL2.E2H = 0: one privilege level)
// ---------------------------------------------------------------------------------------------
//
// Arm ARM "Translation table descriptor formats", stage 1 Block and Page descriptors:
//   bits[1:0]  0b01 block (levels 1, 2), 0b11 page (level 3) or table (levels 0-2)
//   bits[4:2]  AttrIndx: selects Attr<n> of MAIR_EL2
//   bit 5      NS (0)
//   bits[7:6]  AP[2:1] ("Data access permissions"): in a regime with only one privilege
//              level AP[1] (bit 6) is RES1, AP[2] (bit 7) = 1 read-only, 0 read/write
//   bits[9:8]  SH: 0b11 Inner Shareable
//   bit 10     AF
//   bit 11     nG (0: the EL2 regime has no ASIDs)
//   bit 54     XN
// MAIR_EL2 Attr<n> (Arm ARM register description): 0b0000_dd00 Device (dd = 0b00 nGnRnE,
// 0b01 nGnRE, ...); otherwise Attr[7:4] outer, Attr[3:0] inner: 0b0100 Non-cacheable,
// 0b10RW Write-Through non-transient, 0b11RW Write-Back non-transient (R, W = allocate).
// This format uses Attr0 = Device-nGnRE, Attr1 = WB, Attr2 = NC, Attr3 = WT.

mod stage1_el2 {
    use super::*;

    #[test]
    fn mair_el2_bytes() {
        let bytes = MAIR_EL2.to_le_bytes();
        // Attr0 = 0b0000_0100: Device (0b0000), nGnRE (0b01 << 2)
        assert_eq!(bytes[0], 0x04);
        // Attr1 = 0b1111_1111: Outer WB non-transient RA WA (0b1111), Inner same
        assert_eq!(bytes[1], 0xff);
        // Attr2 = 0b0100_0100: Outer Non-cacheable (0b0100), Inner Non-cacheable (0b0100)
        assert_eq!(bytes[2], 0x44);
        // Attr3 = 0b1011_1011: Outer WT non-transient RA WA (0b1011), Inner same
        assert_eq!(bytes[3], 0xbb);
        // Attr4..7 unused: 0x00 (Device-nGnRnE).
        assert_eq!(bytes[4..], [0, 0, 0, 0]);
        assert_eq!(MAIR_EL2, 0x0000_0000_bb44_ff04);
    }

    #[test]
    fn every_memory_type_selects_a_mair_byte_with_that_type() {
        let s1 = Stage1El2::new(48).unwrap();
        // The MAIR_EL2 encoding each type must get (see the module comment).
        for (memory, mair_byte) in [(DEVICE, 0x04u8), (NC, 0x44), (WT, 0xbb), (WB, 0xff)] {
            let raw = s1
                .encode_leaf(Level::L3, pa(0x4000_0000), attrs(Access::RW, memory))
                .bits();
            let attr_index = (raw >> 2) & 0b111;
            assert_eq!(
                MAIR_EL2.to_le_bytes()[attr_index as usize],
                mair_byte,
                "{memory:?}: AttrIndx {attr_index}"
            );
        }
    }

    #[test]
    fn leaf_descriptors_one_per_level() {
        let s1 = Stage1El2::new(48).unwrap();
        let rwx = Attributes::RAM_RWX;
        // 4 KiB page: 0x4000_1000 | AF(1<<10) | SH=0b11<<8 | AP=0b01<<6 (AP[1] RES1, RW)
        //   | AttrIndx=1<<2 (WB) | page 0b11
        assert_eq!(
            s1.encode_leaf(Level::L3, pa(0x4000_1000), rwx).bits(),
            0x0000_0000_4000_1747
        );
        // 2 MiB block: 0x4020_0000 | AF | SH=0b11<<8 | AP=0b01<<6 | AttrIndx=1<<2 | block 0b01
        assert_eq!(
            s1.encode_leaf(Level::L2, pa(0x4020_0000), rwx).bits(),
            0x0000_0000_4020_0745
        );
        // 1 GiB block: 0x4000_0000 | AF | SH=0b11<<8 | AP=0b01<<6 | AttrIndx=1<<2 | block 0b01
        assert_eq!(
            s1.encode_leaf(Level::L1, pa(0x4000_0000), rwx).bits(),
            0x0000_0000_4000_0745
        );
    }

    #[test]
    fn table_descriptor() {
        let s1 = Stage1El2::new(48).unwrap();
        // 0x8000_3000 | table 0b11 (APTable, XNTable, NSTable all 0)
        for lvl in [Level::L0, Level::L1, Level::L2] {
            let d = s1.encode_table(lvl, pa(0x8000_3000));
            assert_eq!(d.bits(), 0x0000_0000_8000_3003);
            assert_eq!(s1.decode(lvl, d), Entry::Table(pa(0x8000_3000)));
        }
    }

    #[test]
    fn permissions() {
        let s1 = Stage1El2::new(48).unwrap();
        let out = pa(0x4020_0000);
        // 2 MiB WB blocks: 0x4020_0000 | AF(0x400) | SH(0x300) | AP[1]=1<<6 (0x40)
        //   | AttrIndx=1<<2 (0x4) | block 0b01 = 0x4020_0745, plus AP[2]<<7 and XN(1<<54):
        let cases = [
            // AP[2]=1 (read-only) = 0x80, XN
            (Access::READ, 0x0040_0000_4020_07c5),
            // AP[2]=0 (read/write), XN
            (Access::RW, 0x0040_0000_4020_0745),
            // AP[2]=1, XN clear
            (Access::RX, 0x0000_0000_4020_07c5),
            // AP[2]=0, XN clear
            (Access::RWX, 0x0000_0000_4020_0745),
        ];
        for (access, expected) in cases {
            let a = attrs(access, WB);
            let d = s1.encode_leaf(Level::L2, out, a);
            assert_eq!(d.bits(), expected, "{a}: {d:?}");
            assert_eq!(
                s1.decode(Level::L2, d),
                Entry::Leaf {
                    output: out,
                    attributes: a
                }
            );
        }
        // AP[2:1] has no encoding without read access (stage 1 data is always readable), and
        // XN cannot make a page execute-only.
        for access in [
            Access::empty(),
            Access::WRITE,
            Access::EXECUTE,
            Access::WRITE | Access::EXECUTE,
        ] {
            assert!(
                s1.check_attributes(attrs(access, WB)).is_err(),
                "{access:?}"
            );
        }
    }

    #[test]
    fn memory_types() {
        let s1 = Stage1El2::new(48).unwrap();
        let out = pa(0x4000_5000);
        // 4 KiB RW pages: 0x4000_5000 | XN(1<<54) | AF(0x400) | SH(0x300) | AP=0b01<<6 (0x40)
        //   | page 0b11 = 0x0040_0000_4000_5743, plus AttrIndx<<2:
        let cases = [
            (DEVICE, 0x0040_0000_4000_5743), // AttrIndx 0 (Attr0 0x04 Device-nGnRE)
            (WB, 0x0040_0000_4000_5747),     // AttrIndx 1 (Attr1 0xff) -> 0x4
            (NC, 0x0040_0000_4000_574b),     // AttrIndx 2 (Attr2 0x44) -> 0x8
            (WT, 0x0040_0000_4000_574f),     // AttrIndx 3 (Attr3 0xbb) -> 0xc
        ];
        for (memory, expected) in cases {
            let a = attrs(Access::RW, memory);
            let d = s1.encode_leaf(Level::L3, out, a);
            assert_eq!(d.bits(), expected, "{a}: {d:?}");
            assert_eq!(
                s1.decode(Level::L3, d),
                Entry::Leaf {
                    output: out,
                    attributes: a
                }
            );
        }
    }

    #[test]
    fn invalid_and_reserved_encodings() {
        let s1 = Stage1El2::new(48).unwrap();
        assert_eq!(
            s1.decode(Level::L3, d(0x0000_0000_4000_1746)),
            Entry::Invalid
        );
        // bits[1:0] = 0b01 at level 3: reserved, treated as invalid.
        assert_eq!(
            s1.decode(Level::L3, d(0x0000_0000_4000_1745)),
            Entry::Invalid
        );
        // No level-0 block with a 4KB granule.
        assert_eq!(
            s1.decode(Level::L0, d(0x0000_0000_0000_0745)),
            Entry::Invalid
        );
    }

    #[test]
    fn decode_of_encode_is_identity() {
        let readable = [Access::READ, Access::RW, Access::RX, Access::RWX];
        assert_round_trip(&Stage1El2::new(48).unwrap(), &readable);
        assert_round_trip(&Stage1El2::new(39).unwrap(), &readable);
    }

    /// `AArch64.S1StartLevel`: start = 3 - ((IA bits - 1 - 12) / 9), no concatenation at
    /// stage 1. 25..=30 bits start at level 2, 31..=39 at level 1, 40..=48 at level 0
    /// (the "TCR_ELx.TnSZ values and IA ranges" table for the 4KB granule: T0SZ 16-24 level
    /// 0, 25-33 level 1, 34-39 level 2). Root entries 2^(bits - shift of the start level).
    #[test]
    fn start_level_per_va_size() {
        for bits in 25..=48u32 {
            let (start, shift) = match bits {
                25..=30 => (2, 21),
                31..=39 => (1, 30),
                _ => (0, 39),
            };
            let s1 = Stage1El2::new(bits).unwrap();
            assert_eq!(s1.start_level(), level(start), "{bits}-bit VA");
            assert_eq!(s1.root_entries(), 1 << (bits - shift), "{bits}-bit VA");
            assert_eq!(s1.root_frames(), 1, "{bits}-bit VA");
            assert_eq!(u32::from(s1.tcr(PaSize::Bits48).t0sz()), 64 - bits);
        }
        assert_eq!(Stage1El2::new(39).unwrap().root_entries(), 512);
        assert_eq!(Stage1El2::new(25).unwrap().root_entries(), 16);
        assert_eq!(Stage1El2::new(40).unwrap().root_entries(), 2);
        for bits in [24, 49] {
            assert_eq!(
                Stage1El2::new(bits),
                Err(ConfigError::InputSize {
                    bits,
                    min: 25,
                    max: 48
                })
            );
        }
    }

    // TCR_EL2 with HCR_EL2.E2H = 0 (Arm ARM register description): T0SZ[5:0]; IRGN0[9:8];
    // ORGN0[11:10]; SH0[13:12]; TG0[15:14] (0b00 = 4KB); PS[18:16]; TBI[20] = 0; HA[21] =
    // HD[22] = 0; bit 23 RES1; bit 31 RES1.
    #[test]
    fn tcr_el2_values() {
        // 48-bit VA, PS = 48: T0SZ=16 (0x10) | IRGN0=0b01<<8 | ORGN0=0b01<<10 | SH0=0b11<<12
        //   (0x3500) | PS=0b101<<16 (0x5_0000) | RES1 1<<23 (0x80_0000) | RES1 1<<31
        assert_eq!(
            Stage1El2::new(48).unwrap().tcr(PaSize::Bits48).bits(),
            0x8085_3510
        );
        // 39-bit VA, PS = 40: T0SZ=25 (0x19) | 0x3500 | PS=0b010<<16 (0x2_0000) | 1<<23 | 1<<31
        assert_eq!(
            Stage1El2::new(39).unwrap().tcr(PaSize::Bits40).bits(),
            0x8082_3519
        );
        // 32-bit VA, PS = 32: T0SZ=32 (0x20) | 0x3500 | PS=0 | 1<<23 | 1<<31
        let tcr = Stage1El2::new(32).unwrap().tcr(PaSize::Bits32);
        assert_eq!(tcr.bits(), 0x8080_3520);
        assert_eq!(tcr.t0sz(), 32);
        // 25-bit VA, PS = 36: T0SZ=39 (0x27) | 0x3500 | PS=0b001<<16 | 1<<23 | 1<<31
        assert_eq!(
            Stage1El2::new(25).unwrap().tcr(PaSize::Bits36).bits(),
            0x8081_3527
        );
    }

    #[test]
    fn descriptors_in_the_tables_the_walk_selects() {
        let mut mem = fake();
        // 39-bit VA: start level 1, one 512-entry root (VA[38:30]).
        let mut t = PageTable::new(Stage1El2::new(39).unwrap(), &mut mem).unwrap();
        // 1 GiB at VA 0x4000_0000: root index 1.
        map(
            &mut t,
            &mut mem,
            va(0x4000_0000),
            0x4000_0000,
            GIB,
            Attributes::RAM_RWX,
        );
        // 2 MiB read-only at VA 0x8040_0000: root index 2, level-2 index 2.
        map(
            &mut t,
            &mut mem,
            va(0x8040_0000),
            0x4040_0000,
            MIB2,
            Attributes::RAM_RO,
        );
        // 4 KiB device page at VA 0x0900_0000: root index 0, level-2 index 0x0900_0000 >> 21
        // = 72, level-3 index 0.
        map(
            &mut t,
            &mut mem,
            va(0x0900_0000),
            0x0900_0000,
            KIB4,
            Attributes::DEVICE_RW,
        );

        // 0x4000_0000 | AF | SH=0b11<<8 | AP=0b01<<6 | AttrIndx=1<<2 | block 0b01
        assert_eq!(walk(&t, &mem, &[1]), [0x0000_0000_4000_0745]);

        let path = walk(&t, &mem, &[2, 2]);
        assert_table_descriptor(path[0], 0b11, "EL2 stage 1 root[2]");
        // 0x4040_0000 | XN(1<<54) | AF | SH=0b11<<8 | AP=0b11<<6 (read-only) | AttrIndx=1<<2
        //   | block 0b01
        assert_eq!(path[1], 0x0040_0000_4040_07c5);

        let path = walk(&t, &mem, &[0, 72, 0]);
        assert_table_descriptor(path[0], 0b11, "EL2 stage 1 root[0]");
        assert_table_descriptor(path[1], 0b11, "EL2 stage 1 L2[72]");
        // 0x0900_0000 | XN(1<<54) | AF | SH=0b11<<8 | AP=0b01<<6 | AttrIndx=0 | page 0b11
        assert_eq!(path[2], 0x0040_0000_0900_0743);

        let stats = t.stats(&mem);
        assert_eq!(stats.leaves, [0, 1, 1, 1]);
        assert_eq!(stats.frames, 4);
        let unsupported = t.map(
            &mut mem,
            &mut NotLive,
            Mapping {
                input: va(0x1000_0000),
                output: pa(0x1000_0000),
                size: KIB4,
                attributes: attrs(Access::EXECUTE, WB),
            },
            MapMode::New,
        );
        assert!(matches!(
            unsupported.map_err(|e| e.reason),
            Err(Reason::UnsupportedAttributes { .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Intel EPT (4-level)
// ---------------------------------------------------------------------------------------------
//
// Intel SDM Vol. 3C "The Extended Page Table Mechanism (EPT)":
//   bit 0 read, bit 1 write, bit 2 execute (supervisor execute with mode-based control)
//   bits 5:3 EPT memory type of a leaf (0 UC, 1 WC, 4 WT, 5 WP, 6 WB; 2, 3, 7 reserved)
//   bit 6 ignore PAT (0), bit 7 = 1 in a PDPTE/PDE that maps a 1 GiB/2 MiB page (must be 0
//   in a PML4E, bits 7:3 reserved), ignored in a PTE
//   bits 8/9 accessed/dirty (only with EPTP bit 6; left 0)
//   bits N-1:12 (N-1:21, N-1:30 for large pages) physical address
// Table-referencing entries: R/W/X and the address, bits 7:3 zero.

mod ept {
    use super::*;

    #[test]
    fn leaf_descriptors_one_per_level() {
        let ept = Ept::new(LargePages::ALL);
        let rwx = Attributes::RAM_RWX;
        // 4 KiB PTE: 0x4000_1000 | WB 6<<3 (0x30) | X 1<<2 | W 1<<1 | R 1<<0
        assert_eq!(
            ept.encode_leaf(Level::L3, pa(0x4000_1000), rwx).bits(),
            0x0000_0000_4000_1037
        );
        // 2 MiB PDE: 0x4020_0000 | page 1<<7 | WB 6<<3 | X | W | R
        assert_eq!(
            ept.encode_leaf(Level::L2, pa(0x4020_0000), rwx).bits(),
            0x0000_0000_4020_00b7
        );
        // 1 GiB PDPTE: 0x1_0000_0000 | page 1<<7 | WB 6<<3 | X | W | R
        assert_eq!(
            ept.encode_leaf(Level::L1, pa(0x1_0000_0000), rwx).bits(),
            0x0000_0001_0000_00b7
        );
        // Highest 52-bit page: bits 51:12 all ones | WB | RWX
        assert_eq!(
            ept.encode_leaf(Level::L3, pa(0x000f_ffff_ffff_f000), rwx)
                .bits(),
            0x000f_ffff_ffff_f037
        );
    }

    #[test]
    fn table_descriptor() {
        let ept = Ept::new(LargePages::ALL);
        // 0x8000_1000 | X | W | R (bits 7:3 zero)
        for lvl in [Level::L0, Level::L1, Level::L2] {
            let d = ept.encode_table(lvl, pa(0x8000_1000));
            assert_eq!(d.bits(), 0x0000_0000_8000_1007);
            assert_eq!(ept.decode(lvl, d), Entry::Table(pa(0x8000_1000)));
        }
    }

    #[test]
    fn permissions() {
        let ept = Ept::new(LargePages::ALL).with_execute_only(true);
        let out = pa(0x4020_0000);
        // 2 MiB WB pages: 0x4020_0000 | page 1<<7 | WB 6<<3 = 0x4020_00b0, plus R/W/X:
        let cases = [
            (Access::READ, 0x0000_0000_4020_00b1),    // R
            (Access::RW, 0x0000_0000_4020_00b3),      // R | W
            (Access::RX, 0x0000_0000_4020_00b5),      // R | X
            (Access::RWX, 0x0000_0000_4020_00b7),     // R | W | X
            (Access::EXECUTE, 0x0000_0000_4020_00b4), // X only (needs execute-only support)
        ];
        for (access, expected) in cases {
            let a = attrs(access, WB);
            assert!(ept.check_attributes(a).is_ok(), "{a}");
            let d = ept.encode_leaf(Level::L2, out, a);
            assert_eq!(d.bits(), expected, "{a}: {d:?}");
            assert_eq!(
                ept.decode(Level::L2, d),
                Entry::Leaf {
                    output: out,
                    attributes: a
                }
            );
        }
        // Without the execute-only capability, X alone is refused and decodes as nothing.
        let plain = Ept::new(LargePages::ALL);
        let x_only = attrs(Access::EXECUTE, WB);
        assert!(plain.check_attributes(x_only).is_err());
        assert_eq!(
            plain.decode(Level::L2, Descriptor::from_bits(0x4020_00b4)),
            Entry::Invalid
        );
        // "EPT Misconfigurations": bits 2:0 = 0 is not present; write without read
        // (bit 1 set, bit 0 clear) is a misconfiguration.
        for access in [
            Access::empty(),
            Access::WRITE,
            Access::WRITE | Access::EXECUTE,
        ] {
            assert!(
                ept.check_attributes(attrs(access, WB)).is_err(),
                "{access:?}"
            );
        }
    }

    #[test]
    fn memory_types() {
        let ept = Ept::new(LargePages::ALL);
        let out = pa(0x4000_5000);
        // 4 KiB RW PTEs: 0x4000_5000 | W | R, plus the EPT memory type << 3:
        let cases = [
            (DEVICE, 0x0000_0000_4000_5003), // UC = 0
            (NC, 0x0000_0000_4000_500b),     // WC = 1 -> 0x08
            (WT, 0x0000_0000_4000_5023),     // WT = 4 -> 0x20
            (WB, 0x0000_0000_4000_5033),     // WB = 6 -> 0x30
        ];
        for (memory, expected) in cases {
            let a = attrs(Access::RW, memory);
            let d = ept.encode_leaf(Level::L3, out, a);
            assert_eq!(d.bits(), expected, "{a}: {d:?}");
            assert_eq!(
                ept.decode(Level::L3, d),
                Entry::Leaf {
                    output: out,
                    attributes: a
                }
            );
        }
        // WP (5) is a write-through type for reads; it decodes as write-through.
        assert_eq!(
            ept.decode(Level::L3, d(0x0000_0000_4000_502b)),
            Entry::Leaf {
                output: out,
                attributes: attrs(Access::RW, WT)
            }
        );
    }

    #[test]
    fn hand_written_descriptors_decode() {
        let ept = Ept::new(LargePages::ALL);
        // PTE bit 7 is ignored: 0x1234_5000 | bit 7 | WB | RWX is still a 4 KiB page.
        assert_eq!(
            ept.decode(Level::L3, d(0x0000_0000_1234_50b7)),
            Entry::Leaf {
                output: pa(0x1234_5000),
                attributes: Attributes::RAM_RWX
            }
        );
        // Bits 63:52 are ignored in every entry.
        assert_eq!(
            ept.decode(Level::L1, d(0xfff0_0001_0000_00b7)),
            Entry::Leaf {
                output: pa(0x1_0000_0000),
                attributes: Attributes::RAM_RWX
            }
        );
        // Not present: bits 2:0 all zero, the rest ignored.
        assert_eq!(
            ept.decode(Level::L3, d(0x0000_0000_1234_50b0)),
            Entry::Invalid
        );
        assert_eq!(
            ept.decode(Level::L0, d(0x0000_0000_8000_1000)),
            Entry::Invalid
        );
        // A PML4E with bit 7 set (bits 7:3 of a PML4E are reserved) maps nothing.
        assert_eq!(
            ept.decode(Level::L0, d(0x0000_0000_8000_1087)),
            Entry::Invalid
        );
        // A 1 GiB page where the CPU has none.
        let no_1g = Ept::new(LargePages {
            two_mib: true,
            one_gib: false,
        });
        assert_eq!(
            no_1g.decode(Level::L1, d(0x0000_0001_0000_00b7)),
            Entry::Invalid
        );
    }

    /// Intel SDM "EPT Misconfigurations": a present EPT paging-structure entry that maps a
    /// page is misconfigured (and translates nothing) if its memory type (bits 5:3) is 2, 3
    /// or 7, which are reserved ("EPT and Memory Typing"). The `Format::decode` contract:
    /// "Encodings the format reserves decode as Entry::Invalid".
    #[test]
    fn reserved_memory_types_decode_as_invalid() {
        let ept = Ept::new(LargePages::ALL);
        for (lvl, raw) in [
            // 4 KiB PTE: 0x4000_1000 | type << 3 | X | W | R
            (Level::L3, 0x0000_0000_4000_1017u64), // type 2 -> 0x10
            (Level::L3, 0x0000_0000_4000_101f),    // type 3 -> 0x18
            (Level::L3, 0x0000_0000_4000_103f),    // type 7 -> 0x38
            // 2 MiB PDE: 0x4020_0000 | page 1<<7 | type 2 << 3 | X | W | R
            (Level::L2, 0x0000_0000_4020_0097),
        ] {
            assert_eq!(
                ept.decode(lvl, d(raw)),
                Entry::Invalid,
                "{lvl:?} {raw:#x}: reserved EPT memory type"
            );
        }
    }

    /// Intel SDM "EPT Misconfigurations": an EPT paging-structure entry is misconfigured if
    /// bit 0 is clear and bit 1 is set (write without read), at every level.
    #[test]
    fn write_without_read_decodes_as_invalid() {
        let ept = Ept::new(LargePages::ALL);
        // 4 KiB PTE: 0x4000_1000 | WB 6<<3 | W
        assert_eq!(
            ept.decode(Level::L3, d(0x0000_0000_4000_1032)),
            Entry::Invalid,
            "write-only EPT PTE"
        );
        // PML4E: 0x8000_1000 | W
        assert_eq!(
            ept.decode(Level::L0, d(0x0000_0000_8000_1002)),
            Entry::Invalid,
            "write-only EPT PML4E"
        );
    }

    #[test]
    fn decode_of_encode_is_identity() {
        let accepted = [Access::READ, Access::RW, Access::RX, Access::RWX];
        assert_round_trip(&Ept::new(LargePages::ALL), &accepted);
        assert_round_trip(&Ept::new(LargePages::NONE), &accepted);
        // Execute-only pages only with the capability (IA32_VMX_EPT_VPID_CAP bit 0).
        let with_x_only = [
            Access::READ,
            Access::EXECUTE,
            Access::RW,
            Access::RX,
            Access::RWX,
        ];
        assert_round_trip(
            &Ept::new(LargePages::ALL).with_execute_only(true),
            &with_x_only,
        );
        assert_round_trip(&Ept::from_capabilities(1 | 1 << 16 | 1 << 17), &with_x_only);
    }

    // EPTP (SDM Vol. 3C "Extended-Page-Table Pointer (EPTP)"): bits 2:0 memory type of the
    // EPT paging structures (0 UC, 6 WB); bits 5:3 page-walk length minus 1 (3 for a 4-level
    // walk); bit 6 enables accessed/dirty flags; bits N-1:12 PML4 table address.
    #[test]
    fn eptp_values() {
        let ept = Ept::new(LargePages::ALL);
        // 0x8000_0000 | walk length 4-1=3 << 3 (0x18) | WB 6
        let eptp = ept.eptp(pa(0x8000_0000));
        assert_eq!(eptp.bits(), 0x0000_0000_8000_001e);
        assert_eq!(eptp.pml4(), pa(0x8000_0000));
        // 0x1_2345_6000 | 0x18 | 6; A/D (bit 6) off
        assert_eq!(ept.eptp(pa(0x1_2345_6000)).bits(), 0x0000_0001_2345_601e);
        // Highest 52-bit PML4 address.
        assert_eq!(
            ept.eptp(pa(0x000f_ffff_ffff_f000)).bits(),
            0x000f_ffff_ffff_f01e
        );
    }

    #[test]
    fn capabilities_select_large_pages() {
        // IA32_VMX_EPT_VPID_CAP (SDM Appendix A.10): bit 16 = 2 MiB pages, bit 17 = 1 GiB.
        let both = Ept::from_capabilities(0x0003_0000);
        assert!(both.block_allowed(Level::L2) && both.block_allowed(Level::L1));
        let two_mib = Ept::from_capabilities(0x0001_0000);
        assert!(two_mib.block_allowed(Level::L2) && !two_mib.block_allowed(Level::L1));
        let none = Ept::from_capabilities(0);
        assert!(!none.block_allowed(Level::L2) && !none.block_allowed(Level::L1));
        assert!(!both.block_allowed(Level::L0));
    }

    #[test]
    fn descriptors_in_the_tables_the_walk_selects() {
        let mut mem = fake();
        let mut t = PageTable::new(Ept::new(LargePages::ALL), &mut mem).unwrap();
        // 1 GiB at GPA 0x4000_0000: PML4 index 0, PDPT index 1.
        map(
            &mut t,
            &mut mem,
            gpa(0x4000_0000),
            0x1_0000_0000,
            GIB,
            Attributes::RAM_RWX,
        );
        // 2 MiB device at GPA 0xfe00_0000: PML4 0, PDPT 0xfe00_0000 >> 30 = 3,
        // PD (0xfe00_0000 >> 21) & 0x1ff = 0x1f0 = 496.
        map(
            &mut t,
            &mut mem,
            gpa(0xfe00_0000),
            0xfe00_0000,
            MIB2,
            Attributes::DEVICE_RW,
        );
        // 4 KiB read-only WC page at GPA 0x1000: indices 0, 0, 0, 1.
        map(
            &mut t,
            &mut mem,
            gpa(0x1000),
            0x1234_5000,
            KIB4,
            attrs(Access::READ, NC),
        );

        let path = walk(&t, &mem, &[0, 1]);
        assert_table_descriptor(path[0], 0b111, "EPT PML4E 0");
        // 0x1_0000_0000 | page 1<<7 | WB 6<<3 | X | W | R
        assert_eq!(path[1], 0x0000_0001_0000_00b7);

        let path = walk(&t, &mem, &[0, 3, 496]);
        assert_table_descriptor(path[1], 0b111, "EPT PDPTE 3");
        // 0xfe00_0000 | page 1<<7 | UC 0<<3 | W | R
        assert_eq!(path[2], 0x0000_0000_fe00_0083);

        let path = walk(&t, &mem, &[0, 0, 0, 1]);
        assert_table_descriptor(path[1], 0b111, "EPT PDPTE 0");
        assert_table_descriptor(path[2], 0b111, "EPT PDE 0");
        // 0x1234_5000 | WC 1<<3 | R
        assert_eq!(path[3], 0x0000_0000_1234_5009);

        let stats = t.stats(&mem);
        assert_eq!(stats.leaves, [0, 1, 1, 1]);
        // PML4 + PDPT + PD under PDPTE 3 + PD under PDPTE 0 + PT.
        assert_eq!(stats.frames, 5);
    }

    #[test]
    fn without_1_gib_pages_a_gib_is_512_2_mib_leaves() {
        let mut mem = fake();
        let no_1g = LargePages {
            two_mib: true,
            one_gib: false,
        };
        let mut t = PageTable::new(Ept::new(no_1g), &mut mem).unwrap();
        map(
            &mut t,
            &mut mem,
            gpa(0x4000_0000),
            0x1_0000_0000,
            GIB,
            Attributes::RAM_RWX,
        );
        let stats = t.stats(&mem);
        assert_eq!(stats.leaves, [0, 0, 512, 0]);
        assert_eq!(stats.frames, 3, "PML4 + PDPT + PD");
        // PDPTE 1 references a page directory.
        let path = walk(&t, &mem, &[0, 1, 0]);
        assert_table_descriptor(path[1], 0b111, "EPT PDPTE 1");
        // 0x1_0000_0000 | page 1<<7 | WB 6<<3 | RWX
        assert_eq!(path[2], 0x0000_0001_0000_00b7);
        // PDE 511: 0x1_0000_0000 + 511 * 2 MiB = 0x1_3fe0_0000 | 0xb7
        assert_eq!(walk(&t, &mem, &[0, 1, 511])[2], 0x0000_0001_3fe0_00b7);
        assert_eq!(t.mappings(&mem).count(), 512);
    }

    #[test]
    fn without_large_pages_2_mib_is_512_4_kib_leaves() {
        let mut mem = fake();
        let mut t = PageTable::new(Ept::new(LargePages::NONE), &mut mem).unwrap();
        map(
            &mut t,
            &mut mem,
            gpa(0x20_0000),
            0x4020_0000,
            MIB2,
            Attributes::RAM_RW,
        );
        assert_eq!(t.stats(&mem).leaves, [0, 0, 0, 512]);
        // PT entry 0: 0x4020_0000 | WB 6<<3 | W | R; entry 511: 0x4020_0000 + 511 * 4 KiB.
        assert_eq!(walk(&t, &mem, &[0, 0, 1, 0])[3], 0x0000_0000_4020_0033);
        assert_eq!(walk(&t, &mem, &[0, 0, 1, 511])[3], 0x0000_0000_403f_f033);
    }
}

// ---------------------------------------------------------------------------------------------
// x86-64 4-level long mode: AMD nested paging (Npt) and host tables (HostTables)
// ---------------------------------------------------------------------------------------------
//
// Intel SDM Vol. 3A "4-Level Paging and 5-Level Paging" / AMD APM Vol. 2 5.3, 5.4:
//   bit 0 P, bit 1 R/W, bit 2 U/S, bit 3 PWT, bit 4 PCD, bit 5 A, bit 6 D (leaves),
//   bit 7 PS in a PDPTE/PDE (1 GiB/2 MiB page), PAT in a PTE; reserved (must be 0) in a
//   PML4E; bit 8 G; bit 12 PAT of a large page; bits M-1:12 (M-1:21, M-1:30) address;
//   bit 63 XD/NX (with EFER.NXE).
// Memory type: PAT index = 4*PAT + 2*PCD + PWT selects PA0..PA7 of IA32_PAT ("Selection of
// PAT Entries with PAT, PCD, and PWT Flags").
// AMD APM 15.25.5: nested-table walks treat accesses as user accesses, so every Npt entry
// has U/S = 1; the host tables use U/S = 0.

mod long_mode {
    use super::*;

    #[test]
    fn pat_bytes() {
        // IA32_PAT (MSR 277H) PA0..PA7, one byte each, type in bits 2:0 ("Memory Types That
        // Can Be Encoded With PAT": 00H UC, 01H WC, 04H WT, 05H WP, 06H WB, 07H UC-).
        // PA0 = WB, PA1 = WT, PA2 = WC, PA3 = UC, repeated for PA4..PA7 so the PAT bit does
        // not matter.
        assert_eq!(
            PAT.to_le_bytes(),
            [0x06, 0x04, 0x01, 0x00, 0x06, 0x04, 0x01, 0x00]
        );
        assert_eq!(PAT, 0x0001_0406_0001_0406);
        // The power-on value 0x0007_0406_0007_0406 differs only in PA2/PA6 (UC- instead of WC).
        assert_eq!(PAT ^ 0x0007_0406_0007_0406, 0x0006_0000_0006_0000);
    }

    #[test]
    fn every_memory_type_selects_a_pat_entry_with_that_type() {
        let npt = Npt::new(LargePages::ALL);
        let host = HostTables::new(LargePages::ALL);
        // Device -> UC (00H), NC -> WC (01H), WT -> WT (04H), WB -> WB (06H).
        for (memory, pat_type) in [(DEVICE, 0x00u8), (NC, 0x01), (WT, 0x04), (WB, 0x06)] {
            let a = attrs(Access::RW, memory);
            for (lvl, out, pat_bit) in [
                (Level::L3, 0x4000_5000u64, 7u32), // PTE: PAT is bit 7
                (Level::L2, 0x4020_0000, 12),      // PDE 2 MiB: PAT is bit 12
                (Level::L1, 0x4000_0000, 12),      // PDPTE 1 GiB: PAT is bit 12
            ] {
                for raw in [
                    npt.encode_leaf(lvl, pa(out), a).bits(),
                    host.encode_leaf(lvl, pa(out), a).bits(),
                ] {
                    let index =
                        (((raw >> pat_bit) & 1) << 2) | (((raw >> 4) & 1) << 1) | ((raw >> 3) & 1);
                    assert_eq!(
                        PAT.to_le_bytes()[index as usize],
                        pat_type,
                        "{memory:?} at {lvl:?}: {raw:#x} selects PA{index}"
                    );
                }
            }
        }
    }

    #[test]
    fn npt_leaf_descriptors_one_per_level() {
        let npt = Npt::new(LargePages::ALL);
        let rwx = Attributes::RAM_RWX;
        // 4 KiB PTE: 0x4000_1000 | D 1<<6 | A 1<<5 | U/S 1<<2 | R/W 1<<1 | P 1<<0
        assert_eq!(
            npt.encode_leaf(Level::L3, pa(0x4000_1000), rwx).bits(),
            0x0000_0000_4000_1067
        );
        // 2 MiB PDE: 0x4020_0000 | PS 1<<7 | D | A | U/S | R/W | P
        assert_eq!(
            npt.encode_leaf(Level::L2, pa(0x4020_0000), rwx).bits(),
            0x0000_0000_4020_00e7
        );
        // 1 GiB PDPTE: 0x1_0000_0000 | PS 1<<7 | D | A | U/S | R/W | P
        assert_eq!(
            npt.encode_leaf(Level::L1, pa(0x1_0000_0000), rwx).bits(),
            0x0000_0001_0000_00e7
        );
    }

    #[test]
    fn host_leaf_descriptors_one_per_level() {
        let host = HostTables::new(LargePages::ALL);
        let rwx = Attributes::RAM_RWX;
        // 4 KiB PTE: 0x4000_1000 | D 1<<6 | A 1<<5 | R/W 1<<1 | P 1<<0 (U/S = 0)
        assert_eq!(
            host.encode_leaf(Level::L3, pa(0x4000_1000), rwx).bits(),
            0x0000_0000_4000_1063
        );
        // 2 MiB PDE: 0x4020_0000 | PS 1<<7 | D | A | R/W | P
        assert_eq!(
            host.encode_leaf(Level::L2, pa(0x4020_0000), rwx).bits(),
            0x0000_0000_4020_00e3
        );
        // 1 GiB PDPTE: 0x1_0000_0000 | PS 1<<7 | D | A | R/W | P
        assert_eq!(
            host.encode_leaf(Level::L1, pa(0x1_0000_0000), rwx).bits(),
            0x0000_0001_0000_00e3
        );
    }

    #[test]
    fn table_descriptors() {
        let npt = Npt::new(LargePages::ALL);
        let host = HostTables::new(LargePages::ALL);
        for lvl in [Level::L0, Level::L1, Level::L2] {
            // 0x8000_1000 | A 1<<5 | U/S 1<<2 | R/W 1<<1 | P 1<<0 (PS = 0, NX = 0)
            let d = npt.encode_table(lvl, pa(0x8000_1000));
            assert_eq!(d.bits(), 0x0000_0000_8000_1027);
            assert_eq!(npt.decode(lvl, d), Entry::Table(pa(0x8000_1000)));
            // 0x8000_1000 | A | R/W | P
            let d = host.encode_table(lvl, pa(0x8000_1000));
            assert_eq!(d.bits(), 0x0000_0000_8000_1023);
            assert_eq!(host.decode(lvl, d), Entry::Table(pa(0x8000_1000)));
        }
    }

    #[test]
    fn permissions() {
        let npt = Npt::new(LargePages::ALL);
        let host = HostTables::new(LargePages::ALL);
        let out = pa(0x4020_0000);
        // 2 MiB WB pages: 0x4020_0000 | PS 1<<7 | D 1<<6 | A 1<<5 | P = 0x4020_00e1, plus
        // U/S (Npt), R/W 1<<1 and NX 1<<63:
        let cases = [
            // Npt: | U/S | NX; host: | NX
            (Access::READ, 0x8000_0000_4020_00e5, 0x8000_0000_4020_00e1),
            // Npt: | U/S | R/W | NX; host: | R/W | NX
            (Access::RW, 0x8000_0000_4020_00e7, 0x8000_0000_4020_00e3),
            // Npt: | U/S; host: nothing more
            (Access::RX, 0x0000_0000_4020_00e5, 0x0000_0000_4020_00e1),
            // Npt: | U/S | R/W; host: | R/W
            (Access::RWX, 0x0000_0000_4020_00e7, 0x0000_0000_4020_00e3),
        ];
        for (access, npt_raw, host_raw) in cases {
            let a = attrs(access, WB);
            let d = npt.encode_leaf(Level::L2, out, a);
            assert_eq!(d.bits(), npt_raw, "Npt {a}: {d:?}");
            assert_eq!(
                npt.decode(Level::L2, d),
                Entry::Leaf {
                    output: out,
                    attributes: a
                }
            );
            let d = host.encode_leaf(Level::L2, out, a);
            assert_eq!(d.bits(), host_raw, "host {a}: {d:?}");
            assert_eq!(
                host.decode(Level::L2, d),
                Entry::Leaf {
                    output: out,
                    attributes: a
                }
            );
        }
        // x86 pages are always readable: no write-only, execute-only or no-access encoding.
        for access in [
            Access::empty(),
            Access::WRITE,
            Access::EXECUTE,
            Access::WRITE | Access::EXECUTE,
        ] {
            assert!(npt.check_attributes(attrs(access, WB)).is_err());
            assert!(host.check_attributes(attrs(access, WB)).is_err());
        }
    }

    #[test]
    fn memory_types() {
        let npt = Npt::new(LargePages::ALL);
        let host = HostTables::new(LargePages::ALL);
        let out = pa(0x4000_5000);
        // 4 KiB RW no-execute PTEs: 0x4000_5000 | NX 1<<63 | D | A | R/W | P (| U/S for Npt),
        // plus PCD 1<<4 / PWT 1<<3 selecting PA0..PA3 (PAT bit 7 = 0):
        let cases = [
            // PCD=1 PWT=1 -> PA3 = UC
            (DEVICE, 0x8000_0000_4000_507f, 0x8000_0000_4000_507b),
            // PCD=1 PWT=0 -> PA2 = WC
            (NC, 0x8000_0000_4000_5077, 0x8000_0000_4000_5073),
            // PCD=0 PWT=1 -> PA1 = WT
            (WT, 0x8000_0000_4000_506f, 0x8000_0000_4000_506b),
            // PCD=0 PWT=0 -> PA0 = WB
            (WB, 0x8000_0000_4000_5067, 0x8000_0000_4000_5063),
        ];
        for (memory, npt_raw, host_raw) in cases {
            let a = attrs(Access::RW, memory);
            let d = npt.encode_leaf(Level::L3, out, a);
            assert_eq!(d.bits(), npt_raw, "Npt {a}: {d:?}");
            assert_eq!(
                npt.decode(Level::L3, d),
                Entry::Leaf {
                    output: out,
                    attributes: a
                }
            );
            let d = host.encode_leaf(Level::L3, out, a);
            assert_eq!(d.bits(), host_raw, "host {a}: {d:?}");
            assert_eq!(
                host.decode(Level::L3, d),
                Entry::Leaf {
                    output: out,
                    attributes: a
                }
            );
        }
    }

    #[test]
    fn hand_written_descriptors_decode() {
        let host = HostTables::new(LargePages::ALL);
        // A 2 MiB page with the PAT bit (12) set: the address is bits 51:21 only, and PA4
        // equals PA0 (WB) in this PAT. 0x4020_0000 | PAT 1<<12 | PS | D | A | R/W | P
        assert_eq!(
            host.decode(Level::L2, d(0x0000_0000_4020_10e3)),
            Entry::Leaf {
                output: pa(0x4020_0000),
                attributes: Attributes::RAM_RWX
            }
        );
        // Not present: P = 0.
        assert_eq!(
            host.decode(Level::L3, d(0x0000_0000_4000_1062)),
            Entry::Invalid
        );
        assert_eq!(
            host.decode(Level::L0, d(0x0000_0000_8000_1022)),
            Entry::Invalid
        );
        // PS in a PDPTE where the CPU has no 1 GiB pages: a reserved bit, no translation.
        let no_1g = HostTables::new(LargePages {
            two_mib: true,
            one_gib: false,
        });
        assert_eq!(
            no_1g.decode(Level::L1, d(0x0000_0001_0000_00e3)),
            Entry::Invalid
        );
    }

    /// Intel SDM Table "Format of a PML4 Entry (PML4E) that References a
    /// Page-Directory-Pointer Table": bit 7 "Reserved (must be 0)" (AMD APM Vol. 2
    /// Figure "4-Kbyte PML4E—Long Mode": bit 7 MBZ); a PML4E with it set causes a
    /// reserved-bit page fault ("Page-Fault Exceptions", RSVD) instead of a walk. The
    /// `Format::decode` contract: "Encodings the format reserves decode as Entry::Invalid".
    #[test]
    fn pml4e_with_ps_set_is_reserved() {
        let npt = Npt::new(LargePages::ALL);
        let host = HostTables::new(LargePages::ALL);
        // 0x8000_1000 | PS 1<<7 | A | U/S | R/W | P
        assert_eq!(
            npt.decode(Level::L0, d(0x0000_0000_8000_10a7)),
            Entry::Invalid,
            "Npt PML4E with bit 7 set"
        );
        // 0x8000_1000 | PS 1<<7 | A | R/W | P
        assert_eq!(
            host.decode(Level::L0, d(0x0000_0000_8000_10a3)),
            Entry::Invalid,
            "host PML4E with bit 7 set"
        );
    }

    #[test]
    fn decode_of_encode_is_identity() {
        let readable = [Access::READ, Access::RW, Access::RX, Access::RWX];
        assert_round_trip(&Npt::new(LargePages::ALL), &readable);
        assert_round_trip(&HostTables::new(LargePages::ALL), &readable);
        assert_round_trip(
            &Npt::new(LargePages {
                two_mib: true,
                one_gib: false,
            }),
            &readable,
        );
    }

    #[test]
    fn cr3_values() {
        // CR3 / nCR3: bits M-1:12 PML4 address, PWT (3) = PCD (4) = 0: write-back walks.
        assert_eq!(
            Npt::new(LargePages::ALL).cr3(pa(0x8000_0000)),
            0x0000_0000_8000_0000
        );
        assert_eq!(
            HostTables::new(LargePages::ALL).cr3(pa(0x1_2345_6000)),
            0x0000_0001_2345_6000
        );
    }

    #[test]
    fn npt_descriptors_in_the_tables_the_walk_selects() {
        let mut mem = fake();
        let mut t = PageTable::new(Npt::new(LargePages::ALL), &mut mem).unwrap();
        // 1 GiB at GPA 0x4000_0000: PML4 0, PDPT 1.
        map(
            &mut t,
            &mut mem,
            gpa(0x4000_0000),
            0x1_0000_0000,
            GIB,
            Attributes::RAM_RWX,
        );
        // 2 MiB device at GPA 0xfe00_0000: PML4 0, PDPT 3, PD 496.
        map(
            &mut t,
            &mut mem,
            gpa(0xfe00_0000),
            0xfe00_0000,
            MIB2,
            Attributes::DEVICE_RW,
        );
        // 4 KiB read-only WC page at GPA 0x1000: 0, 0, 0, 1.
        map(
            &mut t,
            &mut mem,
            gpa(0x1000),
            0x1234_5000,
            KIB4,
            attrs(Access::READ, NC),
        );

        let path = walk(&t, &mem, &[0, 1]);
        // Table entries: A | U/S | R/W | P = 0x27.
        assert_table_descriptor(path[0], 0x27, "NPT PML4E 0");
        // 0x1_0000_0000 | PS | D | A | U/S | R/W | P
        assert_eq!(path[1], 0x0000_0001_0000_00e7);

        let path = walk(&t, &mem, &[0, 3, 496]);
        assert_table_descriptor(path[1], 0x27, "NPT PDPTE 3");
        // 0xfe00_0000 | NX | PS | D | A | PCD 1<<4 | PWT 1<<3 | U/S | R/W | P
        assert_eq!(path[2], 0x8000_0000_fe00_00ff);

        let path = walk(&t, &mem, &[0, 0, 0, 1]);
        assert_table_descriptor(path[1], 0x27, "NPT PDPTE 0");
        assert_table_descriptor(path[2], 0x27, "NPT PDE 0");
        // 0x1234_5000 | NX | D | A | PCD | U/S | P
        assert_eq!(path[3], 0x8000_0000_1234_5075);

        let stats = t.stats(&mem);
        assert_eq!(stats.leaves, [0, 1, 1, 1]);
        assert_eq!(stats.frames, 5);
    }

    #[test]
    fn npt_without_1_gib_pages_a_gib_is_512_2_mib_leaves() {
        let mut mem = fake();
        let mut t = PageTable::new(
            Npt::new(LargePages {
                two_mib: true,
                one_gib: false,
            }),
            &mut mem,
        )
        .unwrap();
        map(
            &mut t,
            &mut mem,
            gpa(0x4000_0000),
            0x1_0000_0000,
            GIB,
            Attributes::RAM_RWX,
        );
        let stats = t.stats(&mem);
        assert_eq!(stats.leaves, [0, 0, 512, 0]);
        assert_eq!(stats.frames, 3);
        let path = walk(&t, &mem, &[0, 1, 0]);
        assert_table_descriptor(path[1], 0x27, "NPT PDPTE 1");
        // 0x1_0000_0000 | PS | D | A | U/S | R/W | P
        assert_eq!(path[2], 0x0000_0001_0000_00e7);
        // 0x1_3fe0_0000 (0x1_0000_0000 + 511 * 2 MiB) | 0xe7
        assert_eq!(walk(&t, &mem, &[0, 1, 511])[2], 0x0000_0001_3fe0_00e7);
    }

    #[test]
    fn host_without_1_gib_pages_a_gib_is_512_2_mib_leaves() {
        let mut mem = fake();
        let mut t = PageTable::new(
            HostTables::new(LargePages {
                two_mib: true,
                one_gib: false,
            }),
            &mut mem,
        )
        .unwrap();
        map(
            &mut t,
            &mut mem,
            va(0xffff_ffff_c000_0000),
            0x4000_0000,
            GIB,
            Attributes::RAM_RWX,
        );
        assert_eq!(t.stats(&mem).leaves, [0, 0, 512, 0]);
        // PML4 511, PDPT 511, PD 0: 0x4000_0000 | PS | D | A | R/W | P
        assert_eq!(walk(&t, &mem, &[511, 511, 0])[2], 0x0000_0000_4000_00e3);
    }

    /// Canonical addresses (SDM "Canonical Addressing", APM 5.3.1): bits 63:48 copy bit 47.
    /// The PML4 index is VA[47:39], so 0xffff_8000_0000_0000 uses PML4 entry 256 and
    /// 0xffff_ffff_c000_0000 (VA[47:39] = 0x1ff, VA[38:30] = 0x1ff) PML4 entry 511, PDPT
    /// entry 511.
    #[test]
    fn host_tables_map_the_upper_canonical_half() {
        let mut mem = fake();
        let mut t = PageTable::new(HostTables::new(LargePages::ALL), &mut mem).unwrap();
        map(
            &mut t,
            &mut mem,
            va(0xffff_8000_0000_0000),
            0x20_0000,
            MIB2,
            Attributes::RAM_RW,
        );
        map(
            &mut t,
            &mut mem,
            va(0xffff_ffff_c000_0000),
            0x4000_0000,
            GIB,
            Attributes::RAM_RWX,
        );
        // Top of the lower half: VA[47:39] = 255, VA[38:30] = 511, VA[29:21] = 511.
        map(
            &mut t,
            &mut mem,
            va(0x0000_7fff_ffe0_0000),
            0x60_0000,
            MIB2,
            Attributes::RAM_RO,
        );

        let path = walk(&t, &mem, &[256, 0, 0]);
        assert_table_descriptor(path[0], 0x23, "host PML4E 256");
        assert_table_descriptor(path[1], 0x23, "host PDPTE 0");
        // 0x20_0000 | NX 1<<63 | PS | D | A | R/W | P
        assert_eq!(path[2], 0x8000_0000_0020_00e3);

        let path = walk(&t, &mem, &[511, 511]);
        assert_table_descriptor(path[0], 0x23, "host PML4E 511");
        // 0x4000_0000 | PS | D | A | R/W | P
        assert_eq!(path[1], 0x0000_0000_4000_00e3);

        // 0x60_0000 | NX | PS | D | A | P
        assert_eq!(walk(&t, &mem, &[255, 511, 511])[2], 0x8000_0000_0060_00e1);

        // Exactly PML4 entries 255, 256 and 511 are in use.
        let used: Vec<usize> = (0..512)
            .filter(|&i| mem.read_descriptor(t.root(), i).bits() != 0)
            .collect();
        assert_eq!(used, [255, 256, 511]);

        // The iterator reports canonical addresses, in ascending order.
        assert_eq!(
            t.mappings(&mem).collect::<Vec<_>>(),
            [
                Mapping {
                    input: va(0x0000_7fff_ffe0_0000),
                    output: pa(0x60_0000),
                    size: MIB2,
                    attributes: Attributes::RAM_RO
                },
                Mapping {
                    input: va(0xffff_8000_0000_0000),
                    output: pa(0x20_0000),
                    size: MIB2,
                    attributes: Attributes::RAM_RW
                },
                Mapping {
                    input: va(0xffff_ffff_c000_0000),
                    output: pa(0x4000_0000),
                    size: GIB,
                    attributes: Attributes::RAM_RWX
                },
            ]
        );
        let tr = t.translate(&mem, va(0xffff_ffff_c000_1234)).unwrap();
        assert_eq!(
            (tr.output, tr.size, tr.level),
            (pa(0x4000_1234), GIB, Level::L1)
        );
        let tr = t.translate(&mem, va(0xffff_8000_001f_fff8)).unwrap();
        assert_eq!((tr.output, tr.level), (pa(0x3f_fff8), Level::L2));
        assert_eq!(t.stats(&mem).leaves, [0, 1, 2, 0]);
    }

    #[test]
    fn host_tables_reject_non_canonical_addresses() {
        let mut mem = fake();
        let mut t = PageTable::new(HostTables::new(LargePages::ALL), &mut mem).unwrap();
        for (input, size) in [
            // Bit 47 set, bits 63:48 clear.
            (0x0000_8000_0000_0000u64, KIB4),
            // Bits 63:48 set, bit 47 clear.
            (0xffff_0000_0000_0000, KIB4),
            (0xffff_7fff_ffff_f000, KIB4),
            // Canonical start, but the range runs into the hole.
            (0x0000_7fff_ffff_f000, 2 * KIB4),
        ] {
            let result = t.map(
                &mut mem,
                &mut NotLive,
                Mapping {
                    input: va(input),
                    output: pa(0x1000),
                    size,
                    attributes: Attributes::RAM_RW,
                },
                MapMode::New,
            );
            let e = result.expect_err("non-canonical range must be rejected");
            assert_eq!(e.operation, Operation::Map);
            assert_eq!(e.reason, Reason::OutOfRange { bits: 48 }, "{input:#x}");
            assert!(t.translate(&mem, va(input)).is_none());
        }
        assert_eq!(t.stats(&mem).frames, 1, "nothing was allocated");
        assert_eq!(t.mappings(&mem).count(), 0);
    }
}

/// The qemu-x86 root cell's case: RAM below 2 GiB in 1 GiB and 2 MiB leaves, then a cell's
/// 16 MiB less a page taken out of the middle: the split keeps every other page mapped to
/// itself, with its attributes, in both nested formats.
#[test]
fn taking_a_range_out_of_a_large_leaf_keeps_the_rest() {
    fn check<F: Format<Input = GuestPhysAddr> + Copy>(format: F) {
        let mut mem = fake();
        let mut table = PageTable::new(format, &mut mem).unwrap();
        for (start, end) in [(0x180_0000u64, 0x7000_0000u64), (0x7000_0000, 0x8000_0000)] {
            table
                .map(
                    &mut mem,
                    &mut NotLive,
                    Mapping {
                        input: gpa(start),
                        output: pa(start),
                        size: end - start,
                        attributes: Attributes::RAM_RWX,
                    },
                    MapMode::New,
                )
                .unwrap();
        }
        table
            .unmap(&mut mem, &mut NotLive, gpa(0x7000_0000), 0xff_f000)
            .unwrap();
        for address in [
            0x180_0000u64,
            0x4000_0000,
            0x6fff_ffff,
            0x70ff_f000,
            0x7100_0000,
            0x7dc2_dbf0,
            0x7ffa_5000,
            0x7fff_ffff,
        ] {
            let t = table.translate(&mem, gpa(address));
            assert_eq!(
                t.map(|t| (t.output.as_u64(), t.attributes)),
                Some((address, Attributes::RAM_RWX)),
                "{address:#x}"
            );
        }
        for address in [0x7000_0000u64, 0x7080_0000, 0x70ff_efff] {
            assert!(
                table.translate(&mem, gpa(address)).is_none(),
                "{address:#x}"
            );
        }
    }
    check(Npt::new(LargePages::ALL));
    check(Ept::new(LargePages::ALL));
    check(Stage2::new(40).unwrap());
}
