//! Host tests of the configuration-space emulation, and property tests that a cell's
//! accesses never change another cell's functions, nor move its own BARs.

use std::string::ToString;
use std::vec::Vec;

use cellvisor_cell::CellId;
use cellvisor_config::Bdf;
use proptest::prelude::*;

use crate::fake::FakeConfigSpace;
use crate::{
    ecam_decode, Accessor, AnyMsi, ConfigAddress, DeviceError, MsiPolicy, Outcome, PciConfig,
    PciViolation, Reason,
};

const CELL: CellId = CellId(1);

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(bus, device, function).unwrap()
}

/// The root cell's host bridge 00:00.0 and NIC 00:02.0, the cell's `edu` 00:04.0 (a 1 MiB BAR
/// 0 at 0xfe00_0000, MSI at 0x40) and a bridge 00:1e.0 given to the cell.
fn machine() -> (FakeConfigSpace, PciConfig) {
    let mut hw = FakeConfigSpace::new();
    hw.add_function(bdf(0, 0, 0), 0x8086, 0x29c0, &[]);
    hw.add_function(bdf(0, 2, 0), 0x8086, 0x10d3, &[0xfffe_0000, 0xffff_ffe1]);
    hw.add_function(
        bdf(0, 4, 0),
        0x1234,
        0x11e8,
        &[0xfff0_0000, 0, 0, 0, 0, 0, 0xffff_f801],
    );
    hw.add_msi(bdf(0, 4, 0), 0x40);
    hw.add_bridge(bdf(0, 0x1e, 0), 0x8086, 0x244e);
    hw.set(bdf(0, 4, 0), 0x10, 4, 0xfe00_0000);
    hw.set(bdf(0, 4, 0), 0x04, 2, 0b111);
    let mut pci = PciConfig::new();
    pci.assign(&mut hw, CELL, &[bdf(0, 4, 0), bdf(0, 0x1e, 0)])
        .unwrap();
    (hw, pci)
}

const ROOT: Accessor = Accessor {
    cell: CellId::ROOT,
    cpu: 0,
};
const BY_CELL: Accessor = Accessor { cell: CELL, cpu: 2 };

fn read(
    pci: &mut PciConfig,
    hw: &mut FakeConfigSpace,
    by: Accessor,
    f: Bdf,
    reg: u16,
) -> Result<Outcome, PciViolation> {
    pci.config(hw, &AnyMsi, by, f, reg, 4, None)
}

fn write(
    pci: &mut PciConfig,
    hw: &mut FakeConfigSpace,
    by: Accessor,
    f: Bdf,
    reg: u16,
    value: u32,
) -> Result<Outcome, PciViolation> {
    pci.config(hw, &AnyMsi, by, f, reg, 4, Some(value))
}

#[test]
fn addresses_decode() {
    let a = ConfigAddress(1 << 31 | 0x05 << 16 | 0x1f << 11 | 3 << 8 | 0x44);
    assert!(a.enabled());
    assert_eq!((a.bdf(), a.register()), (bdf(5, 0x1f, 3), 0x44));
    // AMD's extended register bits 27:24.
    assert_eq!(ConfigAddress(1 << 31 | 0x3 << 24 | 0x10).register(), 0x310);
    assert_eq!(ecam_decode(0x0510_b044), (bdf(0x51, 0x01, 3), 0x044));
}

#[test]
fn functions_change_hands_all_or_nothing() {
    let (mut hw, mut pci) = machine();
    assert_eq!(pci.devices().owner(bdf(0, 4, 0)), CELL);
    assert_eq!(pci.devices().owner(bdf(0, 2, 0)), CellId::ROOT);
    // Decoding and mastering stop when the root cell gives the device away.
    assert_eq!(hw.get(bdf(0, 4, 0), 0x04, 2), 0);
    assert_eq!(
        pci.assign(&mut hw, CellId(2), &[bdf(0, 2, 0), bdf(0, 4, 0)]),
        Err(DeviceError::Taken {
            bdf: bdf(0, 4, 0),
            owner: CELL
        })
    );
    assert_eq!(pci.devices().owner(bdf(0, 2, 0)), CellId::ROOT);
    assert_eq!(
        pci.assign(&mut hw, CellId(2), &[bdf(0, 9, 0)]),
        Err(DeviceError::Absent(bdf(0, 9, 0)))
    );
    assert_eq!(
        pci.assign(&mut hw, CellId::ROOT, &[bdf(0, 2, 0)]),
        Err(DeviceError::ToRoot)
    );
    assert_eq!(
        DeviceError::Taken {
            bdf: bdf(0, 4, 0),
            owner: CELL
        }
        .to_string(),
        "PCI 00:04.0 belongs to cell 1 already"
    );
    // The BAR was sized with decoding off, and put back.
    assert_eq!(hw.get(bdf(0, 4, 0), 0x10, 4), 0xfe00_0000);
    assert_eq!(
        pci.devices().of(CELL).collect::<Vec<_>>(),
        [bdf(0, 4, 0), bdf(0, 0x1e, 0)]
    );
    // One function back: only if it is the cell's, decoding off again.
    write(&mut pci, &mut hw, BY_CELL, bdf(0, 4, 0), 0x04, 0b110).unwrap();
    assert!(!pci.release_function(&mut hw, CellId(2), bdf(0, 4, 0)));
    assert!(!pci.release_function(&mut hw, CELL, bdf(0, 2, 0)));
    assert!(pci.release_function(&mut hw, CELL, bdf(0, 4, 0)));
    assert_eq!(hw.get(bdf(0, 4, 0), 0x04, 2), 0);
    assert_eq!(pci.devices().owner(bdf(0, 4, 0)), CellId::ROOT);
    assert_eq!(pci.devices().owner(bdf(0, 0x1e, 0)), CELL);
    pci.assign(&mut hw, CELL, &[bdf(0, 4, 0)]).unwrap();
    assert_eq!(pci.release(&mut hw, CELL), 2);
    assert_eq!(pci.devices().owner(bdf(0, 4, 0)), CellId::ROOT);
    assert_eq!(pci.devices().owner(bdf(0, 0x1e, 0)), CellId::ROOT);
}

#[test]
fn other_cells_functions_are_absent() {
    let (mut hw, mut pci) = machine();
    let edu = bdf(0, 4, 0);
    assert_eq!(
        read(&mut pci, &mut hw, ROOT, edu, 0),
        Ok(Outcome::Read(u32::MAX))
    );
    assert_eq!(
        pci.config(&mut hw, &AnyMsi, ROOT, edu, 0, 2, None),
        Ok(Outcome::Read(0xffff))
    );
    assert_eq!(
        read(&mut pci, &mut hw, BY_CELL, bdf(0, 2, 0), 0),
        Ok(Outcome::Read(u32::MAX))
    );
    assert_eq!(
        read(&mut pci, &mut hw, BY_CELL, edu, 0),
        Ok(Outcome::Read(0x11e8_1234))
    );
    // Writes: refused for the root cell, a stop for others; nothing changes.
    assert_eq!(
        write(&mut pci, &mut hw, ROOT, edu, 0x04, 0b110),
        Ok(Outcome::Refused(Reason::Foreign(edu)))
    );
    let stop = write(&mut pci, &mut hw, BY_CELL, bdf(0, 2, 0), 0x04, 0b110).unwrap_err();
    assert_eq!(stop.why, Reason::Foreign(bdf(0, 2, 0)));
    assert_eq!(
        stop.to_string(),
        "PCI configuration write of 0x6: PCI 00:02.0 belongs to another cell"
    );
    assert_eq!(
        (hw.get(edu, 0x04, 2), hw.get(bdf(0, 2, 0), 0x04, 2)),
        (0, 0)
    );
}

#[test]
fn a_cell_sizes_its_bars_but_cannot_move_them() {
    let (mut hw, mut pci) = machine();
    let edu = bdf(0, 4, 0);
    // Linux's sizing: read, write ones, read the mask, write the original back.
    assert_eq!(
        read(&mut pci, &mut hw, BY_CELL, edu, 0x10),
        Ok(Outcome::Read(0xfe00_0000))
    );
    assert_eq!(
        write(&mut pci, &mut hw, BY_CELL, edu, 0x10, u32::MAX),
        Ok(Outcome::Written)
    );
    assert_eq!(
        read(&mut pci, &mut hw, BY_CELL, edu, 0x10),
        Ok(Outcome::Read(0xfff0_0000))
    );
    assert_eq!(
        hw.get(edu, 0x10, 4),
        0xfe00_0000,
        "the hardware BAR never moved"
    );
    assert_eq!(
        write(&mut pci, &mut hw, BY_CELL, edu, 0x10, 0xfe00_0000),
        Ok(Outcome::Written)
    );
    assert_eq!(
        read(&mut pci, &mut hw, BY_CELL, edu, 0x10),
        Ok(Outcome::Read(0xfe00_0000))
    );
    // Moving it: a stop; so is a partial write.
    let why = write(&mut pci, &mut hw, BY_CELL, edu, 0x10, 0x4000_0000)
        .unwrap_err()
        .why;
    assert_eq!(why, Reason::BarMove(edu, 0));
    assert_eq!(why.to_string(), "PCI 00:04.0: BAR 0 cannot move");
    let half = pci.config(&mut hw, &AnyMsi, BY_CELL, edu, 0x12, 2, Some(0x4000));
    assert_eq!(half.unwrap_err().why, Reason::BarMove(edu, 0));
    // The expansion ROM: Linux sizes with the address bits only; the enable bit is the cell's.
    assert_eq!(
        write(&mut pci, &mut hw, BY_CELL, edu, 0x30, 0xffff_f800),
        Ok(Outcome::Written)
    );
    assert_eq!(
        read(&mut pci, &mut hw, BY_CELL, edu, 0x30),
        Ok(Outcome::Read(0xffff_f801))
    );
    assert_eq!(
        write(&mut pci, &mut hw, BY_CELL, edu, 0x30, 1),
        Ok(Outcome::Written)
    );
    assert_eq!(hw.get(edu, 0x30, 4), 1);
    // The root cell moves its own BARs freely.
    assert_eq!(
        write(&mut pci, &mut hw, ROOT, bdf(0, 2, 0), 0x10, 0xc000_0000),
        Ok(Outcome::Written)
    );
    assert_eq!(hw.get(bdf(0, 2, 0), 0x10, 4), 0xc000_0000);
}

#[test]
fn a_cells_bridge_has_a_read_only_header() {
    let (mut hw, mut pci) = machine();
    let bridge = bdf(0, 0x1e, 0);
    assert_eq!(
        write(&mut pci, &mut hw, BY_CELL, bridge, 0x04, 0b111),
        Ok(Outcome::Written)
    );
    assert_eq!(hw.get(bridge, 0x04, 2), 0b111);
    // Bus numbers and windows (0x18, 0x20) are the machine's.
    for reg in [0x18, 0x1c, 0x20, 0x24, 0x3c] {
        let why = write(&mut pci, &mut hw, BY_CELL, bridge, reg, 0x0101_0100)
            .unwrap_err()
            .why;
        assert_eq!(why, Reason::BridgeHeader(bridge, reg));
    }
    assert_eq!(
        read(&mut pci, &mut hw, BY_CELL, bridge, 0x0c),
        Ok(Outcome::Read(1 << 16))
    );
}

/// Allows MSI only to 0xfee0_4000 (x86: APIC ID 4, the cell's CPU).
struct ToApic4;

impl MsiPolicy for ToApic4 {
    fn allowed(&self, cell: CellId, address: u64, data: u32) -> bool {
        cell == CELL && address == 0xfee0_4000 && data & 0x700 == 0
    }
}

#[test]
fn an_enabled_msi_must_satisfy_the_policy() {
    let (mut hw, mut pci) = machine();
    let edu = bdf(0, 4, 0);
    let mut w =
        |reg, size, value| pci.config(&mut hw, &ToApic4, BY_CELL, edu, reg, size, Some(value));
    // While disabled, anything may be written.
    assert_eq!(w(0x44, 4, 0xfee0_0000), Ok(Outcome::Written));
    assert_eq!(w(0x4c, 2, 0x0041), Ok(Outcome::Written));
    // Enabling it with a destination the policy refuses: a stop; MSI stays off.
    let why = w(0x42, 2, 1 << 7 | 1).unwrap_err().why;
    assert_eq!(
        why,
        Reason::Msi {
            bdf: edu,
            address: 0xfee0_0000,
            data: 0x41
        }
    );
    assert_eq!(
        why.to_string(),
        "PCI 00:04.0: MSI to 0xfee00000 with data 0x41 leaves the cell"
    );
    assert_eq!(w(0x44, 4, 0xfee0_4000), Ok(Outcome::Written));
    assert_eq!(w(0x42, 2, 1 << 7 | 1), Ok(Outcome::Written));
    // Enabled: changing the data to SMI delivery is refused.
    assert!(w(0x4c, 2, 0x0241).is_err());
    assert_eq!(w(0x4c, 2, 0x0042), Ok(Outcome::Written));
    assert_eq!(hw.get(edu, 0x4c, 2), 0x42);
}

#[test]
fn configuration_ports_latch_per_cpu() {
    let (mut hw, mut pci) = machine();
    let address = |f: Bdf, reg: u32| 1 << 31 | u32::from(f.0) << 8 | reg;
    let other = Accessor {
        cell: CellId::ROOT,
        cpu: 1,
    };
    pci.port(
        &mut hw,
        &AnyMsi,
        ROOT,
        0xcf8,
        4,
        Some(address(bdf(0, 2, 0), 0)),
    )
    .unwrap();
    pci.port(
        &mut hw,
        &AnyMsi,
        other,
        0xcf8,
        4,
        Some(address(bdf(0, 0, 0), 0)),
    )
    .unwrap();
    assert_eq!(
        pci.port(&mut hw, &AnyMsi, ROOT, 0xcfc, 4, None),
        Ok(Outcome::Read(0x10d3_8086))
    );
    assert_eq!(
        pci.port(&mut hw, &AnyMsi, ROOT, 0xcfe, 2, None),
        Ok(Outcome::Read(0x10d3))
    );
    assert_eq!(
        pci.port(&mut hw, &AnyMsi, other, 0xcfc, 2, None),
        Ok(Outcome::Read(0x8086))
    );
    assert_eq!(
        pci.port(&mut hw, &AnyMsi, ROOT, 0xcf8, 4, None),
        Ok(Outcome::Read(address(bdf(0, 2, 0), 0)))
    );
    // Unaligned, or no cycle enabled.
    assert_eq!(
        pci.port(&mut hw, &AnyMsi, BY_CELL, 0xcfd, 2, None)
            .unwrap_err()
            .why,
        Reason::BadAccess { at: 1, size: 2 }
    );
    pci.port(&mut hw, &AnyMsi, BY_CELL, 0xcf8, 4, Some(0))
        .unwrap();
    assert_eq!(
        pci.port(&mut hw, &AnyMsi, BY_CELL, 0xcfc, 4, None),
        Ok(Outcome::Read(u32::MAX))
    );
    // Byte access to 0xcf8..0xcfb is not configuration (0xcf9 resets the machine).
    assert_eq!(
        pci.port(&mut hw, &AnyMsi, BY_CELL, 0xcf9, 1, Some(6))
            .unwrap_err()
            .why,
        Reason::BadAccess { at: 0xcf9, size: 1 }
    );
    assert_eq!(
        pci.port(&mut hw, &AnyMsi, ROOT, 0xcf9, 1, Some(6)),
        Ok(Outcome::Refused(Reason::BadAccess { at: 0xcf9, size: 1 }))
    );
    // ECAM: the same decisions.
    assert_eq!(
        pci.ecam(&mut hw, &AnyMsi, ROOT, 4 << 15, 4, None),
        Ok(Outcome::Read(u32::MAX))
    );
    assert_eq!(
        pci.ecam(&mut hw, &AnyMsi, BY_CELL, 4 << 15, 4, None),
        Ok(Outcome::Read(0x11e8_1234))
    );
}

// --- properties ---------------------------------------------------------------------------

fn everything(hw: &FakeConfigSpace, functions: &[Bdf]) -> Vec<u32> {
    functions
        .iter()
        .flat_map(|&f| (0..0x100).step_by(4).map(move |reg| hw.get(f, reg, 4)))
        .collect()
}

fn access_strategy() -> impl Strategy<Value = (u8, u16, u8, Option<u32>)> {
    (
        prop_oneof![Just(0u8), Just(2), Just(4), Just(0x1e), 0u8..32],
        prop_oneof![0u16..0x48, 0u16..0x1000],
        prop_oneof![Just(4u8), Just(2), Just(1), Just(3)],
        prop_oneof![
            Just(None),
            any::<u32>().prop_map(Some),
            Just(Some(u32::MAX))
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Whatever a cell reads or writes, the root cell's functions keep every register, and
    /// the cell's own BARs stay where they were.
    #[test]
    fn a_cell_never_changes_foreign_functions_nor_moves_bars(
        accesses in proptest::collection::vec(access_strategy(), 1..48),
    ) {
        let (mut hw, mut pci) = machine();
        let root_functions = [bdf(0, 0, 0), bdf(0, 2, 0)];
        let before = everything(&hw, &root_functions);
        let bar = hw.get(bdf(0, 4, 0), 0x10, 4);
        for (device, reg, size, write) in accesses {
            let f = bdf(0, device, 0);
            let result = pci.config(&mut hw, &AnyMsi, BY_CELL, f, reg, size, write);
            prop_assert!(!matches!(result, Ok(Outcome::Refused(_))));
            if pci.devices().owner(f) != CELL {
                if write.is_none() {
                    prop_assert!(matches!(result, Ok(Outcome::Read(v)) if v == u32::MAX >> (32 - 8 * u32::from(size.min(4)))) || result.is_err());
                } else {
                    prop_assert!(result.is_err());
                }
            }
            prop_assert_eq!(everything(&hw, &root_functions), before.clone());
            prop_assert_eq!(hw.get(bdf(0, 4, 0), 0x10, 4), bar);
        }
    }

    /// The same for the root cell and the cell's functions: never changed, never stopped.
    #[test]
    fn the_root_never_changes_a_cells_functions(
        accesses in proptest::collection::vec(access_strategy(), 1..48),
    ) {
        let (mut hw, mut pci) = machine();
        let cell_functions = [bdf(0, 4, 0), bdf(0, 0x1e, 0)];
        let before = everything(&hw, &cell_functions);
        for (device, reg, size, write) in accesses {
            let result = pci.config(&mut hw, &AnyMsi, ROOT, bdf(0, device, 0), reg, size, write);
            prop_assert!(result.is_ok());
            prop_assert_eq!(everything(&hw, &cell_functions), before.clone());
        }
    }
}
