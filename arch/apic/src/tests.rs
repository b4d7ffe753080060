//! Host tests: IPI routing, the local APIC policy, IOAPIC partitioning, and property tests
//! that a cell's accesses never reach another cell's CPUs or pins.

use std::string::ToString;
use std::vec::Vec;

use cellvisor_cell::CellId;
use cellvisor_config::CpuSet;
use proptest::prelude::*;

use crate::fake::FakeIoApic;
use crate::icr::{ApicMode, DeliveryMode, Icr};
use crate::ioapic::{
    high_index, low_index, Access, Accessor, IoApic, IoApicRegisters, Outcome, PinError, Reason,
    ENTRY_MASKED, IOAPIC_EOI, IOREGSEL, IOWIN,
};
use crate::ipi::{route, Ignored, IpiKind, IpiViolation, Route};
use crate::lapic::{self, LapicViolation, Read, Register, Write, Writer};
use crate::topology::{Topology, TopologyError};

/// Four CPUs with APIC IDs 0, 2, 4, 6 (as on a machine with SMT off).
fn topology() -> Topology {
    Topology::new(&[0, 2, 4, 6]).unwrap()
}

fn cpus(list: &[u32]) -> CpuSet {
    CpuSet::from_cpus(list.iter().copied())
}

/// The root cell: CPUs 0 and 1; the cell: CPUs 2 and 3.
fn root_cpus() -> CpuSet {
    cpus(&[0, 1])
}
fn cell_cpus() -> CpuSet {
    cpus(&[2, 3])
}
const CELL: CellId = CellId(1);

fn x2(delivery: u32, shorthand: u32, logical: bool, vector: u8, destination: u32) -> Icr {
    Icr::x2apic(
        u64::from(destination) << 32
            | u64::from(shorthand) << 18
            | u64::from(logical) << 11
            | u64::from(delivery) << 8
            | u64::from(vector),
    )
}

fn sent(kind: IpiKind, list: &[u32]) -> Result<Route, IpiViolation> {
    Ok(Route::Send {
        kind,
        cpus: cpus(list),
    })
}

// --- topology -----------------------------------------------------------------------------

#[test]
fn topology_maps_cpus_and_apic_ids_and_refuses_duplicates() {
    let t = topology();
    assert_eq!((t.len(), t.apic_id(2), t.cpu_of(6)), (4, Some(4), Some(3)));
    assert_eq!((t.apic_id(4), t.cpu_of(1)), (None, None));
    let e = Topology::new(&[0, 2, 2]).unwrap_err();
    assert_eq!(e, TopologyError::DuplicateApicId { apic_id: 2, cpu: 2 });
    assert_eq!(e.to_string(), "CPU 2: APIC ID 0x2 is another CPU's already");
    assert!(matches!(
        Topology::new(&(0..65).collect::<Vec<u32>>()),
        Err(TopologyError::TooManyCpus(65))
    ));
    // x2APIC logical IDs: cluster = ID >> 4, bit = ID & 15 (APIC ID 0x13: cluster 1, bit 3).
    let wide = Topology::new(&[0x13]).unwrap();
    assert_eq!(wide.x2apic_logical_id(0), Some(0x1_0008));
}

// --- IPI routing --------------------------------------------------------------------------

#[test]
fn shorthands_and_broadcasts_mean_the_cells_cpus() {
    let t = topology();
    let cell = cell_cpus();
    assert_eq!(
        route(&x2(0, 0b11, false, 0xf0, 0), 2, &cell, &t),
        sent(IpiKind::Fixed(0xf0), &[3])
    );
    assert_eq!(
        route(&x2(0, 0b10, false, 0xf0, 0), 2, &cell, &t),
        sent(IpiKind::Fixed(0xf0), &[2, 3])
    );
    assert_eq!(
        route(&x2(0, 0b01, false, 0x31, 0), 3, &cell, &t),
        sent(IpiKind::Fixed(0x31), &[3])
    );
    // Physical broadcast in both widths.
    assert_eq!(
        route(&x2(0b100, 0, false, 0, u32::MAX), 2, &cell, &t),
        sent(IpiKind::Nmi, &[2, 3])
    );
    let xapic_broadcast = Icr::xapic(0x40, 0xff << 24);
    assert_eq!(
        route(&xapic_broadcast, 0, &root_cpus(), &t),
        sent(IpiKind::Fixed(0x40), &[0, 1])
    );
    // "All but self" in a one-CPU cell: nobody.
    assert_eq!(
        route(&x2(0, 0b11, false, 0xf0, 0), 3, &cpus(&[3]), &t),
        Ok(Route::Ignore(Ignored::NoTarget))
    );
}

#[test]
fn physical_destinations_must_be_the_cells() {
    let t = topology();
    let cell = cell_cpus();
    assert_eq!(
        route(&x2(0, 0, false, 0x40, 6), 2, &cell, &t),
        sent(IpiKind::Fixed(0x40), &[3])
    );
    assert_eq!(
        route(&x2(0, 0, false, 0x40, 2), 2, &cell, &t),
        Err(IpiViolation::ForeignCpu(1))
    );
    // INIT and SIPI to a foreign CPU: the same, never an INIT on the wire.
    assert_eq!(
        route(&x2(0b101, 0, false, 0, 0), 2, &cell, &t),
        Err(IpiViolation::ForeignCpu(0))
    );
    assert_eq!(
        route(&Icr::xapic(0b110 << 8 | 0x9a, 0), 3, &cell, &t),
        Err(IpiViolation::ForeignCpu(0))
    );
    // An APIC ID no CPU has: the hardware delivers to nobody.
    assert_eq!(
        route(&x2(0, 0, false, 0x40, 3), 2, &cell, &t),
        Ok(Route::Ignore(Ignored::NoTarget))
    );
    assert_eq!(
        IpiViolation::ForeignCpu(1).to_string(),
        "CPU 1 belongs to another cell"
    );
}

#[test]
fn xapic_logical_destinations_match_only_the_cells_cpus() {
    let mut t = topology();
    // Both cells' kernels use the flat model and call their first CPU 1, their second 2.
    for (cpu, id) in [(0, 1), (1, 2), (2, 1), (3, 2)] {
        t.set_xapic_dfr(cpu, 0xffff_ffff);
        t.set_xapic_ldr(cpu, id << 24);
    }
    let to_first = Icr::xapic(1 << 11 | 0x50, 1 << 24);
    assert_eq!(
        route(&to_first, 3, &cell_cpus(), &t),
        sent(IpiKind::Fixed(0x50), &[2])
    );
    assert_eq!(
        route(&to_first, 1, &root_cpus(), &t),
        sent(IpiKind::Fixed(0x50), &[0])
    );
    let to_both = Icr::xapic(1 << 11 | 0x50, 3 << 24);
    assert_eq!(
        route(&to_both, 3, &cell_cpus(), &t),
        sent(IpiKind::Fixed(0x50), &[2, 3])
    );
    // The cluster model: cluster 2 (bits 7:4), members by bits 3:0.
    t.set_xapic_dfr(2, 0x0fff_ffff);
    t.set_xapic_ldr(2, 0x21 << 24);
    t.set_xapic_dfr(3, 0x0fff_ffff);
    t.set_xapic_ldr(3, 0x22 << 24);
    assert_eq!(
        route(&Icr::xapic(1 << 11 | 0x50, 0x23 << 24), 2, &cell_cpus(), &t),
        sent(IpiKind::Fixed(0x50), &[2, 3])
    );
    assert_eq!(
        route(&Icr::xapic(1 << 11 | 0x50, 0x13 << 24), 2, &cell_cpus(), &t),
        Ok(Route::Ignore(Ignored::NoTarget))
    );
    // INIT resets the logical ID.
    t.reset_logical(2);
    assert!(!t.accepts_logical(2, ApicMode::XApic, 0x21));
}

#[test]
fn x2apic_logical_destinations_naming_a_foreign_cpu_are_refused() {
    let t = topology();
    // APIC IDs 0, 2, 4, 6 are cluster 0, bits 0, 2, 4, 6.
    assert_eq!(
        route(&x2(0, 0, true, 0x60, 1 << 4 | 1 << 6), 2, &cell_cpus(), &t),
        sent(IpiKind::Fixed(0x60), &[2, 3])
    );
    assert_eq!(
        route(&x2(0, 0, true, 0x60, 1 << 4 | 1), 2, &cell_cpus(), &t),
        Err(IpiViolation::ForeignCpu(0))
    );
    // Another cluster: nobody.
    assert_eq!(
        route(&x2(0, 0, true, 0x60, 1 << 16 | 1 << 4), 2, &cell_cpus(), &t),
        Ok(Route::Ignore(Ignored::NoTarget))
    );
}

#[test]
fn delivery_modes() {
    let t = topology();
    let cell = cell_cpus();
    for mode in [0b010, 0b011, 0b111] {
        assert_eq!(
            route(&x2(mode, 0, false, 0x40, 4), 2, &cell, &t),
            Err(IpiViolation::DeliveryMode(DeliveryMode::from_bits(mode)))
        );
    }
    assert_eq!(
        IpiViolation::DeliveryMode(DeliveryMode::Smi).to_string(),
        "delivery mode SMI is not allowed"
    );
    // INIT assert, and the level de-assert current CPUs ignore.
    assert_eq!(
        route(&x2(0b101, 0, false, 0, 6), 2, &cell, &t),
        sent(IpiKind::Init, &[3])
    );
    let deassert = Icr::x2apic(6 << 32 | 1 << 15 | 0b101 << 8);
    assert_eq!(
        route(&deassert, 2, &cell, &t),
        Ok(Route::Ignore(Ignored::InitDeassert))
    );
    assert_eq!(
        route(&x2(0b110, 0, false, 0x9a, 6), 2, &cell, &t),
        sent(IpiKind::Startup(0x9a), &[3])
    );
    // Fixed vectors below 16 are illegal.
    assert_eq!(
        route(&x2(0, 0, false, 0x0f, 6), 2, &cell, &t),
        Ok(Route::Ignore(Ignored::IllegalVector(0x0f)))
    );
    // Lowest priority: one target.
    assert_eq!(
        route(&x2(0b001, 0b10, false, 0x70, 0), 3, &cell, &t),
        sent(IpiKind::Fixed(0x70), &[2])
    );
    assert_eq!(
        x2(0b101, 0, false, 0, 6).to_string(),
        "INIT IPI to physical destination 0x6"
    );
    assert_eq!(
        x2(0, 0b11, false, 0xf0, 0).to_string(),
        "fixed IPI vector 0xf0 to all other CPUs"
    );
}

// --- local APIC policy --------------------------------------------------------------------

fn writer(cpu: u32, cell: &CpuSet, root: bool) -> Writer<'_> {
    Writer {
        cpu,
        cell_cpus: cell,
        root,
    }
}

#[test]
fn register_offsets_and_msrs_round_trip() {
    let mut count = 0;
    for offset in (0..0x400).step_by(16) {
        if let Some(register) = Register::from_xapic_offset(offset) {
            assert_eq!(register.xapic_offset(), offset);
            assert_eq!(Register::from_xapic_offset(offset + 4), Some(register));
            count += 1;
        }
    }
    assert_eq!(count, 47);
    for msr in 0x800..0x900 {
        if let Some(register) = Register::from_x2apic_msr(msr) {
            assert_eq!(register.x2apic_msr(), msr);
        }
    }
    assert_eq!(Register::from_x2apic_msr(0x830), Some(Register::IcrLow));
    assert_eq!(Register::from_x2apic_msr(0x831), None);
    assert_eq!(Register::from_x2apic_msr(0x83f), Some(Register::SelfIpi));
    assert_eq!(Register::from_xapic_offset(0x3f0), None);
    assert_eq!(Register::from_x2apic_msr(0x1b), None);
    assert_eq!(Register::Isr(3).to_string(), "ISR3");
}

#[test]
fn icr_writes_are_routed_and_the_xapic_high_half_kept() {
    let mut t = topology();
    let cell = cell_cpus();
    let w = writer(2, &cell, false);
    let high = lapic::write(Register::IcrHigh, ApicMode::XApic, 6 << 24, 0, w, &mut t).unwrap();
    assert_eq!(high, Write::KeepIcrHigh(6 << 24));
    assert_eq!(
        lapic::write(Register::IcrLow, ApicMode::XApic, 0x41, 6 << 24, w, &mut t),
        Ok(Write::Ipi(Route::Send {
            kind: IpiKind::Fixed(0x41),
            cpus: cpus(&[3])
        }))
    );
    assert_eq!(
        lapic::write(Register::IcrLow, ApicMode::XApic, 0x41, 0, w, &mut t),
        Err(LapicViolation::Ipi(IpiViolation::ForeignCpu(0)))
    );
    assert_eq!(
        lapic::write(
            Register::IcrLow,
            ApicMode::X2Apic,
            4 << 32 | 0x41,
            0,
            w,
            &mut t
        ),
        Ok(Write::Ipi(Route::Send {
            kind: IpiKind::Fixed(0x41),
            cpus: cpus(&[2])
        }))
    );
    assert_eq!(
        lapic::read(Register::IcrHigh, ApicMode::XApic),
        Read::IcrHigh
    );
    assert_eq!(
        LapicViolation::Ipi(IpiViolation::ForeignCpu(0)).to_string(),
        "interrupt command: CPU 0 belongs to another cell"
    );
}

#[test]
fn lvt_entries_never_send_smi_or_init_and_extint_is_the_roots() {
    let mut t = topology();
    let cell = cell_cpus();
    let root = root_cpus();
    for register in [
        Register::LvtLint0,
        Register::LvtLint1,
        Register::LvtPerf,
        Register::LvtThermal,
        Register::LvtCmci,
    ] {
        for (mode, cell_ok, root_ok) in [
            (0b000u32, true, true),
            (0b100, true, true),
            (0b010, false, false),
            (0b101, false, false),
            (0b111, false, true),
        ] {
            let value = u64::from(mode) << 8 | 0x30;
            let by_cell = lapic::write(
                register,
                ApicMode::X2Apic,
                value,
                0,
                writer(2, &cell, false),
                &mut t,
            );
            let by_root = lapic::write(
                register,
                ApicMode::XApic,
                value,
                0,
                writer(0, &root, true),
                &mut t,
            );
            assert_eq!(
                by_cell.is_ok(),
                cell_ok,
                "{register} mode {mode:#b} by a cell"
            );
            assert_eq!(
                by_root.is_ok(),
                root_ok,
                "{register} mode {mode:#b} by the root"
            );
            // Masked, anything goes.
            let masked = value | 1 << 16;
            assert_eq!(
                lapic::write(
                    register,
                    ApicMode::X2Apic,
                    masked,
                    0,
                    writer(2, &cell, false),
                    &mut t
                ),
                Ok(Write::Pass)
            );
        }
        assert!(lapic::write_intercepted(register));
    }
    assert_eq!(
        LapicViolation::LvtDeliveryMode(Register::LvtPerf, DeliveryMode::Smi).to_string(),
        "LVT performance counter: delivery mode SMI is not allowed"
    );
    // The timer and error entries have no delivery mode: they pass and need no trap.
    assert_eq!(
        lapic::write(
            Register::LvtTimer,
            ApicMode::X2Apic,
            0x2_00ec,
            0,
            writer(2, &cell, false),
            &mut t
        ),
        Ok(Write::Pass)
    );
    for direct in [
        Register::LvtTimer,
        Register::Eoi,
        Register::Tpr,
        Register::SelfIpi,
        Register::TimerInitial,
    ] {
        assert!(!lapic::write_intercepted(direct), "{direct}");
    }
}

#[test]
fn read_only_and_write_only_registers_behave_as_the_hardware() {
    let mut t = topology();
    let cell = cell_cpus();
    let w = writer(2, &cell, false);
    for register in [
        Register::Id,
        Register::Version,
        Register::Ppr,
        Register::Isr(0),
        Register::TimerCurrent,
    ] {
        assert_eq!(
            lapic::write(register, ApicMode::XApic, 1, 0, w, &mut t),
            Ok(Write::Ignore)
        );
        assert_eq!(
            lapic::write(register, ApicMode::X2Apic, 1, 0, w, &mut t),
            Ok(Write::Fault)
        );
    }
    // LDR: written and tracked in xAPIC mode, read-only in x2APIC mode.
    assert_eq!(
        lapic::write(Register::Ldr, ApicMode::XApic, 0x08 << 24, 0, w, &mut t),
        Ok(Write::PassTracked)
    );
    assert!(t.accepts_logical(2, ApicMode::XApic, 0x08));
    assert_eq!(
        lapic::write(Register::Ldr, ApicMode::X2Apic, 1, 0, w, &mut t),
        Ok(Write::Fault)
    );
    assert_eq!(lapic::read(Register::Eoi, ApicMode::X2Apic), Read::Fault);
    assert_eq!(
        lapic::read(Register::SelfIpi, ApicMode::X2Apic),
        Read::Fault
    );
    assert_eq!(lapic::read(Register::Eoi, ApicMode::XApic), Read::Pass);
    assert_eq!(lapic::read(Register::Tpr, ApicMode::X2Apic), Read::Pass);
}

// --- IOAPIC -------------------------------------------------------------------------------

const PINS: u8 = 24;

/// An IOAPIC with pins 5 and 9 given to the cell; the root cell had pin 5 live at vector 0x35
/// to APIC ID 2.
fn ioapic() -> (FakeIoApic, IoApic) {
    let mut hw = FakeIoApic::new(PINS);
    hw.set(high_index(5), 2 << 24);
    hw.set(low_index(5), 0x35);
    let mut io = IoApic::probe(&mut hw);
    io.assign(&mut hw, CELL, &[5, 9]).unwrap();
    (hw, io)
}

fn cell_at(cpu: u32, set: &CpuSet) -> Accessor<'_> {
    Accessor {
        cell: CELL,
        cpus: set,
        cpu,
    }
}

fn root_at(cpu: u32, set: &CpuSet) -> Accessor<'_> {
    Accessor {
        cell: CellId::ROOT,
        cpus: set,
        cpu,
    }
}

fn select(index: u8) -> Access {
    Access {
        offset: IOREGSEL,
        size: 4,
        write: Some(u32::from(index)),
    }
}

fn window(value: Option<u32>) -> Access {
    Access {
        offset: IOWIN,
        size: 4,
        write: value,
    }
}

/// Selects `index` and accesses the window.
fn at(
    io: &mut IoApic,
    hw: &mut FakeIoApic,
    t: &Topology,
    by: Accessor<'_>,
    index: u8,
    value: Option<u32>,
) -> Result<Outcome, crate::IoApicViolation> {
    io.access(hw, t, by, select(index)).unwrap();
    io.access(hw, t, by, window(value))
}

#[test]
fn pins_change_owner_masked_and_come_back_as_they_were() {
    let (mut hw, mut io) = ioapic();
    assert_eq!(io.pins(), PINS);
    assert_eq!(
        (io.owner(5), io.owner(6), io.owner(24)),
        (Some(CELL), Some(CellId::ROOT), None)
    );
    assert_eq!(hw.get(low_index(5)), 0x35 | ENTRY_MASKED);
    // All or nothing.
    assert_eq!(
        io.assign(&mut hw, CellId(2), &[6, 9]),
        Err(PinError::NotRoots {
            pin: 9,
            owner: Some(CELL)
        })
    );
    assert_eq!(io.owner(6), Some(CellId::ROOT));
    assert_eq!(
        io.assign(&mut hw, CellId(2), &[30]),
        Err(PinError::NoSuchPin(30))
    );
    assert_eq!(
        PinError::NotRoots {
            pin: 9,
            owner: Some(CELL)
        }
        .to_string(),
        "pin 9 belongs to cell 1 already"
    );
    // The cell programs pin 5; on release the root's entry is back.
    let t = topology();
    let cell = cell_cpus();
    at(
        &mut io,
        &mut hw,
        &t,
        cell_at(2, &cell),
        high_index(5),
        Some(4 << 24),
    )
    .unwrap();
    at(
        &mut io,
        &mut hw,
        &t,
        cell_at(2, &cell),
        low_index(5),
        Some(0x77),
    )
    .unwrap();
    assert_eq!(
        (hw.get(low_index(5)), hw.get(high_index(5))),
        (0x77, 4 << 24)
    );
    assert_eq!(io.release(&mut hw, CELL), 2);
    assert_eq!(
        (hw.get(low_index(5)), hw.get(high_index(5))),
        (0x35, 2 << 24)
    );
    assert_eq!(
        (io.owner(5), io.owner(9)),
        (Some(CellId::ROOT), Some(CellId::ROOT))
    );
    assert_eq!(io.release(&mut hw, CELL), 0);
}

#[test]
fn each_cpu_has_its_own_index_register() {
    let (mut hw, mut io) = ioapic();
    let t = topology();
    let (root, cell) = (root_cpus(), cell_cpus());
    io.access(&mut hw, &t, root_at(0, &root), select(low_index(6)))
        .unwrap();
    io.access(&mut hw, &t, cell_at(2, &cell), select(low_index(9)))
        .unwrap();
    assert_eq!(
        io.access(
            &mut hw,
            &t,
            root_at(0, &root),
            Access {
                offset: IOREGSEL,
                size: 1,
                write: None
            }
        ),
        Ok(Outcome::Read(u32::from(low_index(6))))
    );
    // The root writes its pin 6 through its own selection, not the cell's pin 9.
    io.access(&mut hw, &t, root_at(0, &root), window(Some(0x46)))
        .unwrap();
    assert_eq!(hw.get(low_index(6)), 0x46);
    assert_eq!(hw.get(low_index(9)), ENTRY_MASKED);
}

#[test]
fn foreign_pins_read_masked_for_the_root_and_stop_other_cells() {
    let (mut hw, mut io) = ioapic();
    let t = topology();
    let (root, cell) = (root_cpus(), cell_cpus());
    let before = hw.clone();
    assert_eq!(
        at(&mut io, &mut hw, &t, root_at(1, &root), low_index(5), None),
        Ok(Outcome::Refused {
            read: ENTRY_MASKED,
            why: Reason::ForeignPin(5)
        })
    );
    assert_eq!(
        at(
            &mut io,
            &mut hw,
            &t,
            root_at(1, &root),
            high_index(9),
            Some(0)
        ),
        Ok(Outcome::Refused {
            read: 0,
            why: Reason::ForeignPin(9)
        })
    );
    let stop = at(
        &mut io,
        &mut hw,
        &t,
        cell_at(3, &cell),
        low_index(6),
        Some(0x40),
    )
    .unwrap_err();
    assert_eq!(stop.why, Reason::ForeignPin(6));
    assert_eq!(
        stop.to_string(),
        "IOAPIC write at offset 0x10: pin 6 belongs to another cell"
    );
    assert_eq!(hw.get(low_index(6)), before.get(low_index(6)));
    // Beyond the last pin, and offsets with no register.
    assert_eq!(
        at(
            &mut io,
            &mut hw,
            &t,
            cell_at(3, &cell),
            low_index(PINS),
            None
        )
        .unwrap_err()
        .why,
        Reason::NoSuchIndex(low_index(PINS))
    );
    assert_eq!(
        io.access(
            &mut hw,
            &t,
            cell_at(3, &cell),
            Access {
                offset: 0x20,
                size: 4,
                write: None
            }
        )
        .unwrap_err()
        .why,
        Reason::BadAccess {
            offset: 0x20,
            size: 4
        }
    );
    assert_eq!(
        io.access(
            &mut hw,
            &t,
            cell_at(3, &cell),
            Access {
                offset: IOWIN,
                size: 2,
                write: Some(0)
            }
        )
        .unwrap_err()
        .why,
        Reason::BadAccess {
            offset: IOWIN,
            size: 2
        }
    );
}

#[test]
fn destinations_must_be_the_owners_cpus() {
    let (mut hw, mut io) = ioapic();
    let t = topology();
    let cell = cell_cpus();
    let by = cell_at(2, &cell);
    // Masked: stored as written, whatever the destination.
    at(&mut io, &mut hw, &t, by, high_index(9), Some(0)).unwrap();
    assert_eq!(hw.get(high_index(9)), 0);
    // Unmasking with the root's CPU as destination: refused, nothing written.
    let refused = at(&mut io, &mut hw, &t, by, low_index(9), Some(0x49)).unwrap_err();
    assert_eq!(
        refused.why,
        Reason::Destination {
            pin: 9,
            destination: 0,
            logical: false
        }
    );
    assert_eq!(hw.get(low_index(9)), ENTRY_MASKED);
    // To its own CPU 3 (APIC ID 6): written.
    at(&mut io, &mut hw, &t, by, high_index(9), Some(6 << 24)).unwrap();
    at(&mut io, &mut hw, &t, by, low_index(9), Some(0x49)).unwrap();
    assert_eq!(hw.get(low_index(9)), 0x49);
    // Moving a live entry to a foreign CPU through the high half: refused.
    assert!(at(&mut io, &mut hw, &t, by, high_index(9), Some(2 << 24)).is_err());
    assert_eq!(hw.get(high_index(9)), 6 << 24);
    // SMI and INIT never, ExtINT only for the root.
    for mode in [0b010, 0b101, 0b111] {
        let why = at(
            &mut io,
            &mut hw,
            &t,
            by,
            low_index(9),
            Some(mode << 8 | 0x49),
        )
        .unwrap_err()
        .why;
        assert_eq!(why, Reason::DeliveryMode(9, DeliveryMode::from_bits(mode)));
    }
    let root = root_cpus();
    at(
        &mut io,
        &mut hw,
        &t,
        root_at(0, &root),
        high_index(2),
        Some(0),
    )
    .unwrap();
    assert_eq!(
        at(
            &mut io,
            &mut hw,
            &t,
            root_at(0, &root),
            low_index(2),
            Some(0b111 << 8)
        ),
        Ok(Outcome::Written)
    );
}

#[test]
fn logical_destinations_reach_the_hardware_as_physical_to_the_cells_cpu() {
    let (mut hw, mut io) = ioapic();
    let mut t = topology();
    // Both kernels call their first CPU 1 (flat model).
    for (cpu, id) in [(0, 1), (1, 2), (2, 1), (3, 2)] {
        t.set_xapic_dfr(cpu, u32::MAX);
        t.set_xapic_ldr(cpu, id << 24);
    }
    let cell = cell_cpus();
    let by = cell_at(3, &cell);
    at(&mut io, &mut hw, &t, by, high_index(5), Some(1 << 24)).unwrap();
    at(&mut io, &mut hw, &t, by, low_index(5), Some(1 << 11 | 0x55)).unwrap();
    // Hardware: physical to APIC ID 4 (CPU 2), not logical 1 (which CPU 0 accepts too).
    assert_eq!(
        (hw.get(low_index(5)), hw.get(high_index(5))),
        (0x55, 4 << 24)
    );
    // The cell reads back what it wrote, with the hardware's remote IRR.
    hw.set(low_index(5), hw.get(low_index(5)) | 1 << 14);
    assert_eq!(
        at(&mut io, &mut hw, &t, by, low_index(5), None),
        Ok(Outcome::Read(1 << 14 | 1 << 11 | 0x55))
    );
    assert_eq!(
        at(&mut io, &mut hw, &t, by, high_index(5), None),
        Ok(Outcome::Read(1 << 24))
    );
    // A logical destination no CPU of the cell accepts.
    let why = at(&mut io, &mut hw, &t, by, high_index(5), Some(4 << 24))
        .unwrap_err()
        .why;
    assert_eq!(
        why,
        Reason::Destination {
            pin: 5,
            destination: 4,
            logical: true
        }
    );
}

#[test]
fn eoi_and_identification() {
    let (mut hw, mut io) = ioapic();
    let t = topology();
    let (root, cell) = (root_cpus(), cell_cpus());
    let by = cell_at(2, &cell);
    at(
        &mut io,
        &mut hw,
        &t,
        by,
        low_index(9),
        Some(ENTRY_MASKED | 0x99),
    )
    .unwrap();
    let eoi = |vector: u32| Access {
        offset: IOAPIC_EOI,
        size: 4,
        write: Some(vector),
    };
    assert_eq!(io.access(&mut hw, &t, by, eoi(0x99)), Ok(Outcome::Written));
    // 0x35 is the vector of the root's pin 5 (kept masked on the hardware while the cell has
    // it, so now nobody's): the cell may not end it.
    hw.set(low_index(6), 0x36);
    assert_eq!(
        io.access(&mut hw, &t, by, eoi(0x36)).unwrap_err().why,
        Reason::ForeignVector(0x36)
    );
    assert_eq!(
        io.access(&mut hw, &t, root_at(0, &root), eoi(0x36)),
        Ok(Outcome::Written)
    );
    assert_eq!(hw.eois, [0x99, 0x36]);
    // Version reads through; ID writes are refused.
    assert_eq!(
        at(&mut io, &mut hw, &t, by, 1, None),
        Ok(Outcome::Read(u32::from(PINS - 1) << 16 | 0x20))
    );
    assert_eq!(
        at(&mut io, &mut hw, &t, root_at(0, &root), 0, Some(5 << 24)),
        Ok(Outcome::Refused {
            read: 0,
            why: Reason::Identification(0)
        })
    );
    assert_eq!(
        at(&mut io, &mut hw, &t, by, 0, Some(5 << 24))
            .unwrap_err()
            .why,
        Reason::Identification(0)
    );
    assert_eq!(
        at(&mut io, &mut hw, &t, by, 3, None).unwrap_err().why,
        Reason::NoSuchIndex(3)
    );
}

// --- properties ---------------------------------------------------------------------------

/// One access of a fuzzed sequence: offset class, size, index, value.
fn access_strategy() -> impl Strategy<Value = (u8, u8, u8, u32)> {
    (
        0u8..8,
        prop_oneof![Just(4u8), Just(1), Just(2), Just(8)],
        any::<u8>(),
        any::<u32>(),
    )
}

fn to_access((kind, size, index, value): (u8, u8, u8, u32)) -> Access {
    match kind {
        0 => Access {
            offset: IOREGSEL,
            size,
            write: Some(u32::from(index)),
        },
        1 | 2 => Access {
            offset: IOWIN,
            size,
            write: Some(value),
        },
        3 => Access {
            offset: IOWIN,
            size,
            write: None,
        },
        4 => Access {
            offset: IOAPIC_EOI,
            size,
            write: Some(value),
        },
        5 => Access {
            offset: IOREGSEL,
            size,
            write: Some(u32::from(low_index(index % PINS))),
        },
        6 => Access {
            offset: IOREGSEL,
            size,
            write: Some(u32::from(high_index(index % PINS))),
        },
        _ => Access {
            offset: u64::from(index),
            size,
            write: Some(value),
        },
    }
}

/// Every register the accessor's cell does not own, as the hardware holds it.
fn foreign_state(hw: &FakeIoApic, io: &IoApic, cell: CellId) -> Vec<(u8, u32)> {
    let mut state = std::vec![(0, hw.get(0)), (2, hw.get(2))];
    for pin in 0..PINS {
        if io.owner(pin) != Some(cell) {
            state.push((low_index(pin), hw.get(low_index(pin))));
            state.push((high_index(pin), hw.get(high_index(pin))));
        }
    }
    state
}

/// Every unmasked entry of `cell`'s pins is physical to one of `cpus`, in an allowed mode.
fn live_entries_are_the_cells(
    hw: &FakeIoApic,
    io: &IoApic,
    t: &Topology,
    cell: CellId,
    cpus: &CpuSet,
) -> bool {
    (0..PINS)
        .filter(|&pin| io.owner(pin) == Some(cell))
        .all(|pin| {
            let low = hw.get(low_index(pin));
            let destination = hw.get(high_index(pin)) >> 24;
            let mode = DeliveryMode::from_bits(low >> 8);
            low & ENTRY_MASKED != 0
                || (low & 1 << 11 == 0
                    && t.cpu_of(destination).is_some_and(|c| cpus.contains(c))
                    && (matches!(
                        mode,
                        DeliveryMode::Fixed | DeliveryMode::LowestPriority | DeliveryMode::Nmi
                    ) || (cell == CellId::ROOT && mode == DeliveryMode::ExtInt)))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever a cell writes, from any of its CPUs, the root cell's pins, the identification
    /// registers and the other EOIs stay as they were, and the cell's live entries point at
    /// its own CPUs.
    #[test]
    fn a_cells_accesses_never_change_foreign_state(
        accesses in proptest::collection::vec((access_strategy(), 2u32..4), 1..64),
        logical in proptest::collection::vec(any::<u8>(), 4),
    ) {
        let (mut hw, mut io) = ioapic();
        let mut t = topology();
        for (cpu, id) in logical.iter().enumerate() {
            t.set_xapic_ldr(cpu as u32, u32::from(*id) << 24);
        }
        let cell = cell_cpus();
        let before = foreign_state(&hw, &io, CELL);
        for (access, cpu) in accesses {
            let access = to_access(access);
            let eois = hw.eois.len();
            let result = io.access(&mut hw, &t, cell_at(cpu, &cell), access);
            prop_assert!(!matches!(result, Ok(Outcome::Refused { .. })), "a cell is never refused quietly");
            if let Ok(Outcome::Written) = result {
                if access.offset == IOAPIC_EOI {
                    prop_assert_eq!(hw.eois.len(), eois + 1);
                }
            } else {
                prop_assert_eq!(hw.eois.len(), eois);
            }
            prop_assert_eq!(&foreign_state(&hw, &io, CELL), &before);
            prop_assert!(live_entries_are_the_cells(&hw, &io, &t, CELL, &cell));
        }
    }

    /// The same for the root cell: the cell's pins never change, and the root's refused
    /// accesses read as masked or zero.
    #[test]
    fn the_roots_accesses_never_change_the_cells_pins(
        accesses in proptest::collection::vec((access_strategy(), 0u32..2), 1..64),
    ) {
        let (mut hw, mut io) = ioapic();
        let t = topology();
        let root = root_cpus();
        let cell_pins = |hw: &FakeIoApic| [5u8, 9].map(|p| (hw.get(low_index(p)), hw.get(high_index(p))));
        let before = cell_pins(&hw);
        for (access, cpu) in accesses {
            let result = io.access(&mut hw, &t, root_at(cpu, &root), to_access(access));
            prop_assert!(result.is_ok(), "the root cell is refused, never stopped");
            if let Ok(Outcome::Refused { read, .. }) = result {
                prop_assert!(read == 0 || read == ENTRY_MASKED);
            }
            prop_assert_eq!(cell_pins(&hw), before);
            prop_assert!(live_entries_are_the_cells(&hw, &io, &t, CellId::ROOT, &root));
        }
    }

    /// Any ICR value from any CPU of the cell: what is sent goes to the cell's CPUs only, is
    /// never SMI, and a refusal names a foreign CPU or a forbidden mode.
    #[test]
    fn ipis_stay_in_the_cell(
        low in any::<u32>(),
        destination in prop_oneof![0u32..8, 0xfeu32..=0xff, any::<u32>()],
        sender in 2u32..4,
        x2apic in any::<bool>(),
        logical in proptest::collection::vec(any::<u8>(), 4),
        cluster in any::<bool>(),
    ) {
        let mut t = topology();
        for (cpu, id) in logical.iter().enumerate() {
            t.set_xapic_ldr(cpu as u32, u32::from(*id) << 24);
            t.set_xapic_dfr(cpu as u32, if cluster { 0 } else { u32::MAX });
        }
        let cell = cell_cpus();
        let icr = if x2apic {
            Icr::x2apic(u64::from(destination) << 32 | u64::from(low))
        } else {
            Icr::xapic(low, destination << 24)
        };
        match route(&icr, sender, &cell, &t) {
            Ok(Route::Send { cpus, .. }) => {
                prop_assert!(!cpus.is_empty());
                prop_assert!(cpus.difference(&cell).is_empty(), "{icr}: {cpus} outside the cell");
            }
            Ok(Route::Ignore(_)) => {}
            Err(IpiViolation::ForeignCpu(cpu)) => prop_assert!(!cell.contains(cpu)),
            Err(IpiViolation::DeliveryMode(mode)) => prop_assert!(matches!(
                mode,
                DeliveryMode::Smi | DeliveryMode::RemoteRead | DeliveryMode::ExtInt
            )),
        }
    }

    /// No value written to an LVT entry by a cell passes with SMI or INIT unmasked.
    #[test]
    fn lvt_writes_never_pass_smi_or_init(value in any::<u32>(), root in any::<bool>(), x2apic in any::<bool>()) {
        let mut t = topology();
        let cell = cell_cpus();
        let mode = if x2apic { ApicMode::X2Apic } else { ApicMode::XApic };
        for register in [Register::LvtLint0, Register::LvtLint1, Register::LvtPerf, Register::LvtThermal, Register::LvtCmci] {
            let result = lapic::write(register, mode, u64::from(value), 0, writer(2, &cell, root), &mut t);
            let delivery = DeliveryMode::from_bits(value >> 8);
            if result.is_ok() && value & 1 << 16 == 0 {
                prop_assert!(!matches!(delivery, DeliveryMode::Smi | DeliveryMode::Init | DeliveryMode::RemoteRead | DeliveryMode::Startup));
                prop_assert!(root || delivery != DeliveryMode::ExtInt);
            }
        }
    }
}

#[test]
fn the_fake_keeps_read_only_bits() {
    let mut hw = FakeIoApic::new(4);
    hw.set(low_index(1), 1 << 14 | ENTRY_MASKED);
    hw.write(low_index(1), 0x41);
    assert_eq!(hw.read(low_index(1)), 1 << 14 | 0x41);
    hw.write(1, 0);
    assert_eq!(hw.read(1), 3 << 16 | 0x20);
}
