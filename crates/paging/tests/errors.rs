//! Bad input: every error names the operation, the address and the reason, with the exact
//! message below, and leaves the tree (every allocated frame) and the allocator as they were.

#![cfg(feature = "fake")]

use cellvisor_paging::fake::FakeMemory;
use cellvisor_paging::{
    Access, Attributes, Cacheability, ConfigError, Ept, Error, GuestPhysAddr, HostTables,
    LargePages, Location, MapMode, Mapping, MemoryType, NotLive, Operation, PaSize, PageTable,
    PhysAddr, Reason, Stage1El2, Stage2, VirtAddr,
};

const MIB2: u64 = 2 << 20;

fn memory() -> FakeMemory {
    FakeMemory::new(PhysAddr::new(0x100_0000_0000), 256)
}

fn ram(input: u64, output: u64, size: u64) -> Mapping<GuestPhysAddr> {
    Mapping {
        input: GuestPhysAddr::new(input),
        output: PhysAddr::new(output),
        size,
        attributes: Attributes::RAM_RWX,
    }
}

/// A stage-2 table (40-bit IPA) with a 2 MiB block at 0x4000_0000 and a page at
/// 0x4020_0000, plus the state to compare failed operations against.
fn populated() -> (PageTable<Stage2>, FakeMemory) {
    let mut mem = memory();
    let mut table = PageTable::new(Stage2::new(40).unwrap(), &mut mem).unwrap();
    let block = ram(0x4000_0000, 0x8000_0000, MIB2);
    table
        .map(&mut mem, &mut NotLive, block, MapMode::New)
        .unwrap();
    let page = ram(0x4020_0000, 0x9000_0000, 0x1000);
    table
        .map(&mut mem, &mut NotLive, page, MapMode::New)
        .unwrap();
    (table, mem)
}

/// Runs `op` on a populated table and checks it fails with `message`, changing nothing.
fn fails_cleanly(
    message: &str,
    op: impl FnOnce(&mut PageTable<Stage2>, &mut FakeMemory) -> Result<(), Error>,
) -> Error {
    let (mut table, mut mem) = populated();
    let before = mem.snapshot();
    let in_use = mem.frames_in_use();
    let error = op(&mut table, &mut mem).expect_err(message);
    assert_eq!(error.to_string(), message);
    assert_eq!(mem.snapshot(), before, "{message}: tree changed");
    assert_eq!(mem.frames_in_use(), in_use, "{message}: frames leaked");
    error
}

#[test]
fn unaligned_input() {
    let e = fails_cleanly(
        "cannot map guest-physical 0x40400800: not aligned to 4 KiB",
        |t, m| {
            t.map(
                m,
                &mut NotLive,
                ram(0x4040_0800, 0x8000_0000, 0x1000),
                MapMode::New,
            )
        },
    );
    assert_eq!(e.operation, Operation::Map);
    assert_eq!(
        e.location,
        Location::Input {
            kind: "guest-physical",
            address: 0x4040_0800
        }
    );
    assert_eq!(e.reason, Reason::Unaligned);
}

#[test]
fn unaligned_size() {
    fails_cleanly(
        "cannot unmap guest-physical 0x40000000: not aligned to 4 KiB",
        |t, m| t.unmap(m, &mut NotLive, GuestPhysAddr::new(0x4000_0000), 0x1800),
    );
}

#[test]
fn unaligned_output() {
    let e = fails_cleanly(
        "cannot map to physical 0x80000010: not aligned to 4 KiB",
        |t, m| {
            t.map(
                m,
                &mut NotLive,
                ram(0x5000_0000, 0x8000_0010, 0x1000),
                MapMode::New,
            )
        },
    );
    assert_eq!(e.location, Location::Output(PhysAddr::new(0x8000_0010)));
}

#[test]
fn empty_range() {
    fails_cleanly(
        "cannot change attributes of guest-physical 0x40000000: the range is empty",
        |t, m| {
            t.protect(
                m,
                &mut NotLive,
                GuestPhysAddr::new(0x4000_0000),
                0,
                Attributes::RAM_RO,
            )
        },
    );
}

#[test]
fn input_beyond_the_address_size() {
    fails_cleanly(
        "cannot map guest-physical 0x10000000000: outside the 40-bit address space of the format",
        |t, m| {
            t.map(
                m,
                &mut NotLive,
                ram(1 << 40, 0x8000_0000, 0x1000),
                MapMode::New,
            )
        },
    );
    // Starts inside, ends outside.
    fails_cleanly(
        "cannot map guest-physical 0xffffe00000: outside the 40-bit address space of the format",
        |t, m| {
            t.map(
                m,
                &mut NotLive,
                ram((1 << 40) - MIB2, 0, 2 * MIB2),
                MapMode::New,
            )
        },
    );
    // Wraps around the 64-bit space.
    fails_cleanly(
        "cannot unmap guest-physical 0xfffffffffffff000: outside the 40-bit address space of the format",
        |t, m| t.unmap(m, &mut NotLive, GuestPhysAddr::new(u64::MAX - 0xfff), 0x2000),
    );
}

#[test]
fn output_beyond_the_address_size() {
    fails_cleanly(
        "cannot map to physical 0xffffffe00000: outside the 48-bit address space of the format",
        |t, m| {
            t.map(
                m,
                &mut NotLive,
                ram(0x6000_0000, (1 << 48) - MIB2, 4 * MIB2),
                MapMode::New,
            )
        },
    );
}

#[test]
fn mapping_over_a_mapping() {
    // The conflict is the first mapped page inside the range: after a hole, the block.
    fails_cleanly(
        "cannot map guest-physical 0x40000000: already mapped (ask for replacement to overwrite)",
        |t, m| t.map(m, &mut NotLive, ram(0x3fff_e000, 0, 0x4000), MapMode::New),
    );
    // Inside a block.
    fails_cleanly(
        "cannot map guest-physical 0x401ff000: already mapped (ask for replacement to overwrite)",
        |t, m| t.map(m, &mut NotLive, ram(0x401f_f000, 0, 0x3000), MapMode::New),
    );
    // A page below a table.
    fails_cleanly(
        "cannot map guest-physical 0x40200000: already mapped (ask for replacement to overwrite)",
        |t, m| t.map(m, &mut NotLive, ram(0x4020_0000, 0, 0x1000), MapMode::New),
    );
    // A 1 GiB block over a table that holds a mapping further in.
    fails_cleanly(
        "cannot map guest-physical 0x40000000: already mapped (ask for replacement to overwrite)",
        |t, m| t.map(m, &mut NotLive, ram(0x4000_0000, 0, 1 << 30), MapMode::New),
    );
}

#[test]
fn replacing_a_mapping_works() {
    let (mut table, mut mem) = populated();
    let over = ram(0x401f_f000, 0x1_0000_0000, 0x3000);
    table
        .map(&mut mem, &mut NotLive, over, MapMode::Replace)
        .unwrap();
    let t = table
        .translate(&mem, GuestPhysAddr::new(0x4020_0000))
        .unwrap();
    assert_eq!(t.output, PhysAddr::new(0x1_0000_1000));
    let t = table
        .translate(&mem, GuestPhysAddr::new(0x401f_e000))
        .unwrap();
    assert_eq!(t.output, PhysAddr::new(0x801f_e000));
    assert_eq!(t.size, 0x1000, "the block was split");
}

#[test]
fn protecting_a_hole() {
    fails_cleanly(
        "cannot change attributes of guest-physical 0x40201000: not mapped",
        |t, m| {
            t.protect(
                m,
                &mut NotLive,
                GuestPhysAddr::new(0x4000_0000),
                4 * MIB2,
                Attributes::RAM_RO,
            )
        },
    );
}

#[test]
fn allocator_exhaustion() {
    // Mapping a page at 0x7f_0000_0000 needs a level-2 and a level-3 table.
    let error = fails_cleanly(
        "cannot map guest-physical 0x7f00000000: out of memory for translation tables (2 frame(s) needed)",
        |t, m| {
            m.set_limit(m.frames_in_use() + 1);
            t.map(m, &mut NotLive, ram(0x7f_0000_0000, 0, 0x1000), MapMode::New)
        },
    );
    assert_eq!(error.reason, Reason::OutOfMemory { frames: 2 });
    // Splitting a block to unmap a page inside it needs one frame.
    fails_cleanly(
        "cannot unmap guest-physical 0x40001000: out of memory for translation tables (1 frame(s) needed)",
        |t, m| {
            m.set_limit(m.frames_in_use());
            t.unmap(m, &mut NotLive, GuestPhysAddr::new(0x4000_1000), 0x1000)
        },
    );
}

#[test]
fn root_allocation_failure() {
    let mut mem = memory();
    mem.set_limit(1);
    // A 40-bit IPA needs two concatenated root tables.
    let error = PageTable::new(Stage2::new(40).unwrap(), &mut mem).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot create translation table: out of memory for translation tables (2 frame(s) needed)"
    );
    assert_eq!(mem.frames_in_use(), 0);
}

#[test]
fn unsupported_attributes() {
    let mut mem = memory();
    let mut table = PageTable::new(Stage1El2::new(39).unwrap(), &mut mem).unwrap();
    let write_only = Attributes::new(Access::WRITE, MemoryType::Normal(Cacheability::WriteBack));
    let mapping = Mapping {
        input: VirtAddr::new(0x4000_0000),
        output: PhysAddr::new(0x4000_0000),
        size: 0x1000,
        attributes: write_only,
    };
    let error = table
        .map(&mut mem, &mut NotLive, mapping, MapMode::New)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot map virtual 0x40000000: attributes -w- normal-wb not supported: Arm stage-1 \
         mappings are always readable (AP has no write-only or no-access encoding)"
    );

    let mut table = PageTable::new(Ept::new(LargePages::ALL), &mut mem).unwrap();
    let x_only = Attributes::new(Access::EXECUTE, MemoryType::Normal(Cacheability::WriteBack));
    let error = table
        .map(
            &mut mem,
            &mut NotLive,
            Mapping {
                attributes: x_only,
                ..ram(0, 0, 0x1000)
            },
            MapMode::New,
        )
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot map guest-physical 0x0: attributes --x normal-wb not supported: execute-only EPT \
         pages are not supported by this CPU"
    );
}

#[test]
fn non_canonical_virtual_addresses() {
    let mut mem = memory();
    let mut table = PageTable::new(HostTables::new(LargePages::ALL), &mut mem).unwrap();
    let error = table
        .unmap(
            &mut mem,
            &mut NotLive,
            VirtAddr::new(0x0000_7fff_ffff_f000),
            0x2000,
        )
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot unmap virtual 0x7ffffffff000: outside the 48-bit address space of the format"
    );
}

#[test]
fn configuration_errors() {
    assert_eq!(
        Stage2::new(31).unwrap_err().to_string(),
        "input address size of 31 bits not supported (must be 32 to 48)"
    );
    assert_eq!(
        Stage1El2::new(49).unwrap_err(),
        ConfigError::InputSize {
            bits: 49,
            min: 25,
            max: 48
        }
    );
    let s2 = Stage2::new(44).unwrap();
    assert_eq!(
        s2.vtcr(PaSize::Bits40, false).unwrap_err().to_string(),
        "input address size of 44 bits exceeds the 40-bit physical address size"
    );
    assert_eq!(
        s2.vttbr(PhysAddr::new(0x8000_0000), 300, false)
            .unwrap_err()
            .to_string(),
        "VMID 300 does not fit in 8 bits (use 16-bit VMIDs)"
    );
    let concatenated = Stage2::new(40).unwrap();
    assert_eq!(
        concatenated
            .vttbr(PhysAddr::new(0x8000_1000), 1, false)
            .unwrap_err()
            .to_string(),
        "table root 0x80001000 is not aligned to its size"
    );
}
