//! Tests of the emulators against [`FakeGic`] and of the list register manager against
//! [`FakeListRegisters`], including property tests that no access by a cell changes anything
//! it does not own.

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use crate::fake::{FakeGic, FakeListRegisters};
use crate::lr::{
    GichListRegisters, InjectError, Injected, ListRegister, ListRegisterFile, ListRegisters,
    LrEncodeError, LrFormat, LrState, VirtualIrq,
};
use crate::v2::{self, Accessor, DistributorV2};
use crate::v3::{self, gicr, DistributorV3, Redistributors};
use crate::{
    Block, CellId, CpuSet, ForeignWrites, IntId, IrqOwnership, MmioAccess, Mpidr, Outcome, Reason,
    Topology, Violation, Width,
};

const ROOT: CellId = CellId::new(0);
const CELL: CellId = CellId::new(1);
/// CPUs 2 and 3.
const CELL_CPUS: CpuSet = CpuSet::from_bits(0b1100);
const BY: Accessor = Accessor {
    cell: CELL,
    cpus: CELL_CPUS,
    cpu: 2,
};
/// The hypervisor's own SGI and the maintenance interrupt.
const HV_SGI: u32 = 15;
const MAINTENANCE: u32 = 25;

fn ownership(implemented: u32) -> IrqOwnership {
    let mut own = IrqOwnership::new(implemented);
    own.reserve_private(IntId::new(HV_SGI));
    own.reserve_private(IntId::new(MAINTENANCE));
    // The cell owns 33, 35 and 64..72; the root cell every other SPI.
    let cell: Vec<IntId> = [33, 35].into_iter().chain(64..72).map(IntId::new).collect();
    own.assign_all(CELL, &cell).unwrap();
    for irq in 32..implemented {
        let _ = own.assign(ROOT, IntId::new(irq));
    }
    own
}

fn read(offset: usize, width: Width) -> MmioAccess {
    MmioAccess::read(offset, width)
}

fn write(offset: usize, width: Width, value: u64) -> MmioAccess {
    MmioAccess::write(offset, width, value)
}

// ---------------------------------------------------------------- list registers

#[test]
fn gicv2_lr_golden_encodings() {
    // Hardware PPI 27 (virtual timer) as 27, priority 0xa0, Group 1, pending:
    // VirtualID 27 | PhysicalID 27 << 10 | (0xa0 >> 3) << 23 | 0b01 << 28 | 1 << 30 | 1 << 31.
    let timer = ListRegister {
        irq: VirtualIrq::hardware(27, 27, 0xa0),
        state: LrState::Pending,
    };
    assert_eq!(LrFormat::V2.encode(&timer), Ok(0xDA00_6C1B));
    // Software SGI 1 from CPU 3, priority 0x80, Group 0, pending: CPUID 3 in [12:10].
    let sgi = ListRegister {
        irq: VirtualIrq {
            group1: false,
            source_cpu: 3,
            ..VirtualIrq::software(1, 0x80)
        },
        state: LrState::Pending,
    };
    assert_eq!(LrFormat::V2.encode(&sgi), Ok(0x1800_0C01));
    // Active-and-pending SPI 1019, lowest priority 0xf8.
    let spi = ListRegister {
        irq: VirtualIrq::software(1019, 0xf8),
        state: LrState::PendingActive,
    };
    assert_eq!(LrFormat::V2.encode(&spi), Ok(0x7F80_03FB));
    for lr in [timer, sgi, spi] {
        assert_eq!(LrFormat::V2.decode(LrFormat::V2.encode(&lr).unwrap()), lr);
    }
}

#[test]
fn gicv3_lr_golden_encodings() {
    // Hardware SPI 48 as 48, priority 0xa0, Group 1, pending:
    // 0b01 << 62 | HW << 61 | Group << 60 | 0xa0 << 48 | 48 << 32 | 48.
    let spi = ListRegister {
        irq: VirtualIrq::hardware(48, 48, 0xa0),
        state: LrState::Pending,
    };
    assert_eq!(LrFormat::V3.encode(&spi), Ok(0x70A0_0030_0000_0030));
    // Software LPI 8192, priority 0, Group 1, pending.
    let lpi = ListRegister {
        irq: VirtualIrq::software(8192, 0),
        state: LrState::Pending,
    };
    assert_eq!(LrFormat::V3.encode(&lpi), Ok(0x5000_0000_0000_2000));
    // Active Group 0 SGI 7, priority 0x10: no source CPU in GICv3 list registers.
    let sgi = ListRegister {
        irq: VirtualIrq {
            group1: false,
            ..VirtualIrq::software(7, 0x10)
        },
        state: LrState::Active,
    };
    assert_eq!(LrFormat::V3.encode(&sgi), Ok(0x8010_0000_0000_0007));
    for lr in [spi, lpi, sgi] {
        assert_eq!(LrFormat::V3.decode(LrFormat::V3.encode(&lr).unwrap()), lr);
    }
}

#[test]
fn lr_encoding_rejects_special_and_bad_ids() {
    let pending = |irq| ListRegister {
        irq,
        state: LrState::Pending,
    };
    for format in [LrFormat::V2, LrFormat::V3] {
        assert_eq!(
            format.encode(&pending(VirtualIrq::software(1023, 0))),
            Err(LrEncodeError::VirtualId(1023))
        );
        assert_eq!(
            format.encode(&pending(VirtualIrq::hardware(40, 3, 0))),
            Err(LrEncodeError::PhysicalId(3))
        );
        assert_eq!(
            format.encode(&pending(VirtualIrq::hardware(40, 1020, 0))),
            Err(LrEncodeError::PhysicalId(1020))
        );
    }
    assert_eq!(
        LrFormat::V2.encode(&pending(VirtualIrq::software(8192, 0))),
        Err(LrEncodeError::VirtualId(8192))
    );
    let bad_source = VirtualIrq {
        source_cpu: 8,
        ..VirtualIrq::software(1, 0)
    };
    assert_eq!(
        LrFormat::V2.encode(&pending(bad_source)),
        Err(LrEncodeError::SourceCpu(8))
    );
}

#[test]
fn injection_uses_free_lrs_then_queues_and_refills_on_underflow() {
    let mut lrs = FakeListRegisters::new(LrFormat::V3, 2);
    let mut manager = ListRegisters::<2>::new(LrFormat::V3);
    let irq = |n| VirtualIrq::hardware(n, n, 0xa0);
    assert_eq!(
        manager.inject(&mut lrs, irq(40)),
        Ok(Injected::ListRegister(0))
    );
    assert_eq!(
        manager.inject(&mut lrs, irq(40)),
        Ok(Injected::AlreadyPending)
    );
    assert_eq!(
        manager.inject(&mut lrs, irq(41)),
        Ok(Injected::ListRegister(1))
    );
    assert!(!lrs.underflow_enabled());
    assert_eq!(manager.inject(&mut lrs, irq(42)), Ok(Injected::Queued));
    assert!(lrs.underflow_enabled());
    assert_eq!(
        manager.inject(&mut lrs, irq(42)),
        Ok(Injected::AlreadyPending)
    );
    assert_eq!(manager.inject(&mut lrs, irq(43)), Ok(Injected::Queued));
    assert_eq!(
        manager.inject(&mut lrs, irq(44)),
        Err(InjectError::QueueFull)
    );
    assert_eq!(manager.queued(), 2);

    // The cell takes 40 and completes it; 41 stays pending: underflow fires.
    lrs.set_state(0, LrState::Invalid);
    assert_eq!(manager.maintenance(&mut lrs), 1);
    assert_eq!(LrFormat::V3.decode(lrs.values()[0]).irq.vintid, 42);
    assert!(lrs.underflow_enabled(), "43 still queued");
    lrs.set_state(0, LrState::Invalid);
    lrs.set_state(1, LrState::Invalid);
    assert_eq!(manager.maintenance(&mut lrs), 1);
    assert_eq!(manager.queued(), 0);
    assert!(!lrs.underflow_enabled());
}

#[test]
fn active_interrupts_are_repended_in_place_or_queued_if_hardware() {
    let mut lrs = FakeListRegisters::new(LrFormat::V2, 4);
    let mut manager = ListRegisters::<4>::new(LrFormat::V2);
    let soft = VirtualIrq::software(1, 0x80);
    let hw = VirtualIrq::hardware(30, 30, 0x80);
    manager.inject(&mut lrs, soft).unwrap();
    manager.inject(&mut lrs, hw).unwrap();
    lrs.set_state(0, LrState::Active);
    lrs.set_state(1, LrState::Active);
    assert_eq!(
        manager.inject(&mut lrs, soft),
        Ok(Injected::ListRegister(0))
    );
    assert_eq!(
        LrFormat::V2.decode(lrs.values()[0]).state,
        LrState::PendingActive
    );
    // A hardware interrupt cannot be pending and active in a list register, and a second
    // list register with the same vINTID is not allowed: it waits.
    assert_eq!(manager.inject(&mut lrs, hw), Ok(Injected::Queued));
    assert_eq!(manager.maintenance(&mut lrs), 0, "30 still active in LR 1");
    lrs.set_state(1, LrState::Invalid);
    assert_eq!(manager.maintenance(&mut lrs), 1);
    assert_eq!(
        manager.inject(&mut lrs, VirtualIrq::software(1020, 0)),
        Err(InjectError::Encode(LrEncodeError::VirtualId(1020)))
    );
}

#[test]
fn clearing_hands_back_every_hardware_interrupt_it_drops() {
    let mut lrs = FakeListRegisters::new(LrFormat::V3, 2);
    let mut manager = ListRegisters::<4>::new(LrFormat::V3);
    manager
        .inject(&mut lrs, VirtualIrq::hardware(27, 27, 0xa0))
        .unwrap();
    manager
        .inject(&mut lrs, VirtualIrq::software(3, 0xa0))
        .unwrap();
    manager
        .inject(&mut lrs, VirtualIrq::hardware(40, 40, 0xa0))
        .unwrap();
    manager
        .inject(&mut lrs, VirtualIrq::software(4, 0xa0))
        .unwrap();
    // The cell took 27 (active in LR 0); 40 and 4 wait in the queue.
    lrs.set_state(0, LrState::Active);
    assert_eq!(manager.queued(), 2);
    assert!(lrs.underflow_enabled());
    let mut dropped = Vec::new();
    manager.clear(&mut lrs, |pintid, state| dropped.push((pintid, state)));
    assert_eq!(dropped, [(27, LrState::Active), (40, LrState::Pending)]);
    assert_eq!(manager.queued(), 0);
    assert!(lrs.values().iter().all(|&lr| lr == 0));
    assert!(!lrs.underflow_enabled());
    // Nothing left to drop.
    manager.clear(&mut lrs, |pintid, _| panic!("{pintid} dropped twice"));
}

#[test]
fn gich_frame_adapter() {
    let mut gich = FakeGic::new();
    gich.set(GichListRegisters::<FakeGic>::VTR, 0x9000_0003); // ListRegs = 3: 4 LRs
    gich.set(GichListRegisters::<FakeGic>::ELRSR0, 0b1011);
    let mut lrs = GichListRegisters::new(gich);
    assert_eq!(lrs.count(), 4);
    let mut manager = ListRegisters::<1>::new(LrFormat::V2);
    assert_eq!(
        manager.inject(&mut lrs, VirtualIrq::hardware(27, 27, 0xa0)),
        Ok(Injected::ListRegister(0))
    );
    assert_eq!(lrs.registers().get(0x100), 0xDA00_6C1B);
    lrs.set_underflow_interrupt(true);
    assert_eq!(lrs.registers().get(0x000), 0b10);
    lrs.set_underflow_interrupt(false);
    assert_eq!(lrs.registers().get(0x000), 0);
}

// ---------------------------------------------------------------- GICv2 distributor

fn v2_setup(policy: ForeignWrites) -> (FakeGic, DistributorV2, IrqOwnership) {
    let mut gicd = FakeGic::new();
    gicd.set(v2::GICD_TYPER, 0b111 | 0b011 << 5); // 256 INTIDs, 4 CPU interfaces
    gicd.set(v2::GICD_IIDR, 0x0200_143B); // GIC-400
    gicd.set(v2::GICD_CTLR, 1);
    let dist = DistributorV2::probe(&mut gicd, ROOT, policy);
    let own = ownership(dist.implemented_irqs());
    (gicd, dist, own)
}

#[test]
fn v2_set_clear_registers_touch_only_owned_bits() {
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    for (set, clear) in [(0x100, 0x180), (0x200, 0x280), (0x300, 0x380)] {
        // Word 1 = INTIDs 32..64: the cell owns 33 and 35.
        gicd.set(set + 4, 0xffff_0000);
        dist.access(&mut gicd, &own, BY, write(set + 4, Width::Word, u64::MAX))
            .unwrap();
        assert_eq!(gicd.get(set + 4), 0xffff_000a);
        assert_eq!(gicd.writes().last(), Some(&(set + 4, 0b1010)));
        let seen = dist.access(&mut gicd, &own, BY, read(clear + 4, Width::Word));
        assert_eq!(seen, Ok(Outcome::Read(0b1010)));
        dist.access(&mut gicd, &own, BY, write(clear + 4, Width::Word, u64::MAX))
            .unwrap();
        assert_eq!(gicd.get(set + 4), 0xffff_0000);
        // A register of only foreign interrupts: nothing is written at all.
        gicd.clear_log();
        dist.access(&mut gicd, &own, BY, write(set + 12, Width::Word, u64::MAX))
            .unwrap();
        assert!(gicd.writes().is_empty());
    }
}

#[test]
fn v2_private_interrupts_exclude_the_hypervisors() {
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    dist.access(&mut gicd, &own, BY, write(0x180, Width::Word, u64::MAX))
        .unwrap();
    assert_eq!(gicd.writes(), [(0x180, !(1 << HV_SGI | 1 << MAINTENANCE))]);
    gicd.set(0x100, u32::MAX);
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(0x100, Width::Word)),
        Ok(Outcome::Read(u64::from(
            !(1u32 << HV_SGI | 1 << MAINTENANCE)
        )))
    );
}

#[test]
fn v2_priority_bytes_and_words_merge_with_foreign_fields() {
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    // IPRIORITYR8 = INTIDs 32..36; the cell owns 33 and 35.
    gicd.set(0x420, 0x1122_3344);
    dist.access(&mut gicd, &own, BY, write(0x420, Width::Word, 0xaabb_ccdd))
        .unwrap();
    assert_eq!(gicd.get(0x420), 0xaa22_cc44);
    dist.access(&mut gicd, &own, BY, write(0x421, Width::Byte, 0x80))
        .unwrap();
    assert_eq!(gicd.get(0x420), 0xaa22_8044);
    // A byte of a foreign interrupt is neither read nor written.
    dist.access(&mut gicd, &own, BY, write(0x422, Width::Byte, 0x00))
        .unwrap();
    assert_eq!(gicd.get(0x420), 0xaa22_8044);
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(0x420, Width::Word)),
        Ok(Outcome::Read(0xaa00_8000))
    );
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(0x423, Width::Byte)),
        Ok(Outcome::Read(0xaa))
    );
}

#[test]
fn priorities_above_the_highest_cell_priority_are_stored_as_it() {
    let limit = u32::from(crate::HIGHEST_CELL_PRIORITY);
    // GICv2 distributor: IPRIORITYR8 = INTIDs 32..36; the cell owns 33 and 35.
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    gicd.set(0x420, 0xa0a0_a0a0);
    dist.access(&mut gicd, &own, BY, write(0x420, Width::Word, 0x0f00_0100))
        .unwrap();
    assert_eq!(
        gicd.get(0x420),
        limit << 24 | 0xa0 << 16 | limit << 8 | 0xa0
    );
    dist.access(&mut gicd, &own, BY, write(0x421, Width::Byte, 0x20))
        .unwrap();
    assert_eq!(gicd.get(0x420), limit << 24 | 0xa0 << 16 | 0x20 << 8 | 0xa0);
    // The cell's SGIs and PPIs (banked) too: INTID 27 is byte 27.
    dist.access(&mut gicd, &own, BY, write(0x41b, Width::Byte, 0))
        .unwrap();
    assert_eq!(gicd.get(0x418) >> 24, limit);

    // GICv3 distributor: IPRIORITYR16 = INTIDs 64..68, all the cell's.
    let (mut gicd, dist, own) = v3_setup(ForeignWrites::Report);
    let topology = Topology::new(&MPIDRS);
    let by = Accessor {
        cell: CELL,
        cpus: V3_CPUS,
        cpu: 2,
    };
    dist.access(
        &mut gicd,
        &own,
        by,
        &topology,
        write(0x440, Width::Word, 0x3000_0810),
    )
    .unwrap();
    assert_eq!(
        gicd.get(0x440),
        0x3000_0000 | limit << 16 | limit << 8 | limit
    );

    // GICv3 redistributor SGI_base: PPI 27 of CPU 3.
    let mut gicr = gicr_setup();
    let own = ownership(256);
    let rd = Redistributors::new(STRIDE, ForeignWrites::Ignore);
    let sgi = 3 * STRIDE + gicr::SGI_BASE;
    rd.access(
        &mut gicr,
        &own,
        V3_BY,
        &topology,
        write(sgi + gicr::IPRIORITYR + 27, Width::Byte, 0x08),
    )
    .unwrap();
    assert_eq!(gicr.get(sgi + gicr::IPRIORITYR + 24) >> 24, limit);
}

#[test]
fn v2_targets_are_restricted_to_the_cells_cpus() {
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    let itargetsr8 = 0x820; // INTIDs 32..36
    gicd.set(itargetsr8, 0x0101_0101);
    // 33 → CPU 2 (own); 35 → CPUs 0 and 3 (3 kept); 32, 34 foreign.
    dist.access(
        &mut gicd,
        &own,
        BY,
        write(itargetsr8, Width::Word, 0x0908_0404),
    )
    .unwrap();
    assert_eq!(gicd.get(itargetsr8), 0x0801_0401);
    // Only foreign CPUs: the targets stay as they were.
    dist.access(
        &mut gicd,
        &own,
        BY,
        write(itargetsr8 + 1, Width::Byte, 0x01),
    )
    .unwrap();
    assert_eq!(gicd.get(itargetsr8), 0x0801_0401);
    // ITARGETSR0..7 (SGIs, PPIs) are read-only.
    gicd.set(0x800, 0x0404_0404);
    dist.access(&mut gicd, &own, BY, write(0x800, Width::Word, 0x0808_0808))
        .unwrap();
    assert_eq!(gicd.get(0x800), 0x0404_0404);

    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Report);
    let err = dist
        .access(
            &mut gicd,
            &own,
            BY,
            write(itargetsr8 + 1, Width::Byte, 0x05),
        )
        .unwrap_err();
    assert_eq!(err.reason, Reason::ForeignCpu(0));
}

#[test]
fn v2_config_and_group_registers() {
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    // ICFGR2 = INTIDs 32..48, 2 bits each: 33 at [3:2], 35 at [7:6].
    gicd.set(0xC08, 0x5555_5555);
    dist.access(
        &mut gicd,
        &own,
        BY,
        write(0xC08, Width::Word, u64::from(u32::MAX)),
    )
    .unwrap();
    assert_eq!(gicd.get(0xC08), 0x5555_55DD);
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(0xC08, Width::Word)),
        Ok(Outcome::Read(0xCC))
    );
    // IGROUPR1 = INTIDs 32..64: the group is the hypervisor's. Reads show the cell's bits,
    // writes change nothing, neither setting nor clearing.
    gicd.set(0x084, 0xffff_fff5);
    gicd.clear_log();
    dist.access(&mut gicd, &own, BY, write(0x084, Width::Word, 0))
        .unwrap();
    dist.access(&mut gicd, &own, BY, write(0x088, Width::Word, 0x1ff))
        .unwrap();
    assert!(gicd.writes().is_empty(), "{:?}", gicd.writes());
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(0x084, Width::Word)),
        Ok(Outcome::Read(0b0000))
    );
    gicd.set(0x084, 0b1010);
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(0x084, Width::Word)),
        Ok(Outcome::Read(0b1010))
    );
}

#[test]
fn v2_ctlr_typer_iidr_are_virtualised() {
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    let root = Accessor {
        cell: ROOT,
        cpus: CpuSet::from_bits(0b11),
        cpu: 0,
    };
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(v2::GICD_TYPER, Width::Word)),
        Ok(Outcome::Read(0x67))
    );
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(v2::GICD_IIDR, Width::Word)),
        Ok(Outcome::Read(0x0200_143B))
    );
    gicd.clear_log();
    // Non-root cell: ignored. Root cell: may enable, never disable.
    dist.access(&mut gicd, &own, BY, write(v2::GICD_CTLR, Width::Word, 0))
        .unwrap();
    dist.access(&mut gicd, &own, root, write(v2::GICD_CTLR, Width::Word, 0))
        .unwrap();
    assert!(gicd.writes().is_empty());
    dist.access(&mut gicd, &own, root, write(v2::GICD_CTLR, Width::Word, 3))
        .unwrap();
    assert_eq!(gicd.get(v2::GICD_CTLR), 3);
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(v2::GICD_CTLR, Width::Word)),
        Ok(Outcome::Read(3))
    );
    dist.access(&mut gicd, &own, BY, write(v2::GICD_TYPER, Width::Word, 0))
        .unwrap();
    assert_eq!(gicd.get(v2::GICD_TYPER), 0x67);
}

#[test]
fn v2_sgir_targets_only_the_cells_cpus() {
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    let sgir = |filter: u32, list: u32, intid: u32| {
        write(
            v2::GICD_SGIR,
            Width::Word,
            u64::from(filter << 24 | list << 16 | intid),
        )
    };
    // Explicit list CPUs 0..8: only 2 and 3 remain.
    dist.access(&mut gicd, &own, BY, sgir(0b00, 0xff, 1))
        .unwrap();
    // All but self (CPU 2): CPU 3 only, as an explicit list.
    dist.access(&mut gicd, &own, BY, sgir(0b01, 0, 2)).unwrap();
    // Self.
    dist.access(&mut gicd, &own, BY, sgir(0b10, 0, 3)).unwrap();
    assert_eq!(gicd.sgis_sent(), [0x000C_0001, 0x0008_0002, 0x0004_0003]);
    // Only foreign CPUs, or the hypervisor's SGI: nothing is sent.
    dist.access(&mut gicd, &own, BY, sgir(0b00, 0b11, 1))
        .unwrap();
    dist.access(&mut gicd, &own, BY, sgir(0b00, 0b1100, HV_SGI))
        .unwrap();
    assert_eq!(gicd.sgis_sent().len(), 3);
    let err = dist
        .access(&mut gicd, &own, BY, sgir(0b11, 0, 1))
        .unwrap_err();
    assert_eq!(err.reason, Reason::ReservedSgiFilter);

    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Report);
    let err = dist
        .access(&mut gicd, &own, BY, sgir(0b00, 0b0101, 1))
        .unwrap_err();
    assert_eq!(err.reason, Reason::ForeignCpu(0));
    let err = dist
        .access(&mut gicd, &own, BY, sgir(0b10, 0, HV_SGI))
        .unwrap_err();
    assert_eq!(err.reason, Reason::ForeignIrq(IntId::new(HV_SGI)));
    assert!(gicd.sgis_sent().is_empty());
}

#[test]
fn v2_sgi_pending_registers() {
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    // SPENDSGIR3 = SGIs 12..16, one byte each; SGI 15 is the hypervisor's.
    dist.access(&mut gicd, &own, BY, write(0xF2C, Width::Word, u64::MAX))
        .unwrap();
    assert_eq!(gicd.get(0xF2C), 0x00ff_ffff);
    dist.access(&mut gicd, &own, BY, write(0xF1C, Width::Byte, 0xff))
        .unwrap();
    assert_eq!(gicd.get(0xF2C), 0x00ff_ff00);
}

#[test]
fn v2_violations() {
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    let cases = [
        (read(0x00C, Width::Word), Reason::ReservedOffset),
        (read(0x7FC, Width::Word), Reason::ReservedOffset),
        (write(0xF04, Width::Word, 0), Reason::ReservedOffset),
        (read(0x1000, Width::Word), Reason::ReservedOffset),
        (write(0x104, Width::Half, 0xffff), Reason::BadWidth),
        (write(0x104, Width::Byte, 0xff), Reason::BadWidth),
        (read(0x420, Width::Double), Reason::BadWidth),
        (read(0x422, Width::Word), Reason::BadWidth),
        (write(v2::GICD_SGIR, Width::Byte, 1), Reason::BadWidth),
        (read(v2::GICD_CTLR, Width::Byte), Reason::BadWidth),
        (read(v2::GICD_CTLR + 1, Width::Byte), Reason::ReservedOffset),
    ];
    for (access, reason) in cases {
        let error = dist.access(&mut gicd, &own, BY, access).unwrap_err();
        assert_eq!(
            error,
            Violation {
                cell: CELL,
                block: Block::Distributor,
                access,
                reason
            }
        );
    }
    assert!(gicd.writes().is_empty());
    // Reports name the first foreign interrupt.
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Report);
    let error = dist
        .access(&mut gicd, &own, BY, write(0x104, Width::Word, 0b1110))
        .unwrap_err();
    assert_eq!(error.reason, Reason::ForeignIrq(IntId::new(34)));
    assert_eq!(error.offset(), 0x104);
    gicd.set(0x420, 0x0000_0011);
    let error = dist
        .access(&mut gicd, &own, BY, write(0x420, Width::Word, 0x0000_4011))
        .unwrap_err();
    assert_eq!(error.reason, Reason::ForeignIrq(IntId::new(32)));
    assert!(gicd.writes().is_empty());
    // Foreign fields read as zero: writing that zero back (a read-modify-write of an own
    // field) is no violation, and the foreign field keeps its value.
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(0x420, Width::Word)),
        Ok(Outcome::Read(0))
    );
    dist.access(&mut gicd, &own, BY, write(0x420, Width::Word, 0x0000_4000))
        .unwrap();
    // INTID 35's priority 0 is stored as the highest a cell may have.
    assert_eq!(gicd.get(0x420), 0x1000_4011);
}

#[test]
fn v2_implementation_defined_and_id_registers() {
    let (mut gicd, dist, own) = v2_setup(ForeignWrites::Ignore);
    gicd.set(0xD04, u32::MAX); // GIC-400 SPISR0: would show foreign interrupts
    gicd.set(0xFE8, 0x2B); // ICPIDR2: ArchRev 2
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(0xD04, Width::Word)),
        Ok(Outcome::Read(0))
    );
    assert_eq!(
        dist.access(&mut gicd, &own, BY, read(0xFE8, Width::Word)),
        Ok(Outcome::Read(0x2B))
    );
    dist.access(&mut gicd, &own, BY, write(0xFE8, Width::Word, 0))
        .unwrap();
    dist.access(&mut gicd, &own, BY, write(0xE00, Width::Word, u64::MAX))
        .unwrap();
    assert!(gicd.writes().is_empty());
}

// ---------------------------------------------------------------- GICv3

const MPIDRS: [Mpidr; 6] = [
    Mpidr::new(0, 0, 0, 0),
    Mpidr::new(0, 0, 0, 1),
    Mpidr::new(0, 0, 1, 0),
    Mpidr::new(0, 0, 1, 1),
    Mpidr::new(1, 2, 0, 17),
    Mpidr::new(1, 2, 0, 18),
];
/// CPUs 2 and 3 (cluster 1) and 4 (Aff3 = 1, RS = 1).
const V3_CPUS: CpuSet = CpuSet::from_bits(0b1_1100);
const V3_BY: Accessor = Accessor {
    cell: CELL,
    cpus: V3_CPUS,
    cpu: 2,
};

fn v3_setup(policy: ForeignWrites) -> (FakeGic, DistributorV3, IrqOwnership) {
    let mut gicd = FakeGic::new();
    // ITLinesNumber 7, LPIS, MBIS, ESPI set: the cell must not see the last three.
    gicd.set(v3::GICD_TYPER, 0x0000_0007 | 1 << 17 | 1 << 16 | 1 << 8);
    let dist = DistributorV3::probe(&mut gicd, ROOT, policy);
    let own = ownership(dist.implemented_irqs());
    (gicd, dist, own)
}

fn irouter(irq: usize) -> usize {
    v3::GICD_IROUTER + 8 * irq
}

#[test]
fn v3_typer_and_private_words() {
    let (mut gicd, dist, own) = v3_setup(ForeignWrites::Ignore);
    let topology = Topology::new(&MPIDRS);
    assert_eq!(
        dist.access(
            &mut gicd,
            &own,
            V3_BY,
            &topology,
            read(v3::GICD_TYPER, Width::Word)
        ),
        Ok(Outcome::Read(0x0200_0007))
    );
    // INTIDs 0..32 live in the redistributors: RAZ/WI here.
    gicd.set(0x100, u32::MAX);
    assert_eq!(
        dist.access(&mut gicd, &own, V3_BY, &topology, read(0x100, Width::Word)),
        Ok(Outcome::Read(0))
    );
    for offset in [0x180, 0x400, 0x41C, 0xC04, 0x800, 0xF00, 0xF20] {
        dist.access(
            &mut gicd,
            &own,
            V3_BY,
            &topology,
            write(offset, Width::Word, u64::MAX),
        )
        .unwrap();
    }
    assert!(gicd.writes().is_empty());
    // The SPI banks behave as on GICv2.
    dist.access(
        &mut gicd,
        &own,
        V3_BY,
        &topology,
        write(0x104, Width::Word, u64::MAX),
    )
    .unwrap();
    assert_eq!(gicd.get(0x104), 0b1010);
    // Group and group modifier are the hypervisor's: writes are ignored.
    gicd.set(0x084, u32::MAX);
    for (offset, value) in [(0xD04, u64::MAX), (0x084, 0)] {
        dist.access(
            &mut gicd,
            &own,
            V3_BY,
            &topology,
            write(offset, Width::Word, value),
        )
        .unwrap();
    }
    assert_eq!(gicd.get(0xD04), 0, "GICD_IGRPMODR1");
    assert_eq!(gicd.get(0x084), u32::MAX, "GICD_IGROUPR1");
    assert_eq!(
        dist.access(&mut gicd, &own, V3_BY, &topology, read(0x084, Width::Word)),
        Ok(Outcome::Read(0b1010)),
        "reads show the cell's lines in Group 1"
    );
}

#[test]
fn v3_irouter_routes_only_to_the_cells_cpus() {
    let (mut gicd, dist, own) = v3_setup(ForeignWrites::Ignore);
    let topology = Topology::new(&MPIDRS);
    let access = |gicd: &mut FakeGic, a| dist.access(gicd, &own, V3_BY, &topology, a);
    let cpu0 = MPIDRS[0].bits();
    gicd.set(irouter(33), cpu0 as u32);
    // To CPU 3 (0.0.1.1): allowed, 64-bit.
    access(
        &mut gicd,
        write(irouter(33), Width::Double, MPIDRS[3].bits()),
    )
    .unwrap();
    assert_eq!(gicd.get(irouter(33)), 0x101);
    // To CPU 4 (1.2.0.17) in two halves: the low half alone would name 0.2.0.17, no CPU:
    // dropped; then the high half completes 1.2.0.17 with the old low half (1.0.1.1): also
    // no CPU. Kernels write 64 bits; a 32-bit writer must write the high half first.
    access(&mut gicd, write(irouter(33) + 4, Width::Word, 1)).unwrap();
    assert_eq!(gicd.get(irouter(33) + 4), 0);
    access(
        &mut gicd,
        write(irouter(33), Width::Word, MPIDRS[4].bits() & 0xffff_ffff),
    )
    .unwrap();
    assert_eq!(gicd.get(irouter(33)), 0x101);
    gicd.set(irouter(33) + 4, 1);
    access(
        &mut gicd,
        write(irouter(33), Width::Word, MPIDRS[4].bits() & 0xffff_ffff),
    )
    .unwrap();
    assert_eq!(gicd.get(irouter(33)), 0x02_0011);
    gicd.set(irouter(33) + 4, 0);
    gicd.set(irouter(33), 0x101);
    // To CPU 0 (foreign), IRM = 1, or to a foreign SPI: nothing changes.
    access(&mut gicd, write(irouter(33), Width::Double, cpu0)).unwrap();
    access(&mut gicd, write(irouter(33), Width::Double, 1 << 31)).unwrap();
    access(
        &mut gicd,
        write(irouter(34), Width::Double, MPIDRS[3].bits()),
    )
    .unwrap();
    assert_eq!(gicd.get(irouter(33)), 0x101);
    assert_eq!(gicd.get(irouter(34)), 0);
    assert_eq!(
        access(&mut gicd, read(irouter(33), Width::Double)),
        Ok(Outcome::Read(0x101))
    );
    gicd.set(irouter(34), 0x1);
    assert_eq!(
        access(&mut gicd, read(irouter(34), Width::Word)),
        Ok(Outcome::Read(0))
    );
    // IROUTER0..31 are reserved; bytes and misaligned doublewords are bad widths.
    for (a, reason) in [
        (read(irouter(31), Width::Double), Reason::ReservedOffset),
        (read(irouter(33), Width::Byte), Reason::BadWidth),
        (read(irouter(33) + 4, Width::Double), Reason::BadWidth),
    ] {
        assert_eq!(access(&mut gicd, a).unwrap_err().reason, reason);
    }

    let (mut gicd, dist, own) = v3_setup(ForeignWrites::Report);
    let access = |gicd: &mut FakeGic, a| dist.access(gicd, &own, V3_BY, &topology, a);
    let reason = |r: Result<Outcome, Violation>| r.unwrap_err().reason;
    assert_eq!(
        reason(access(&mut gicd, write(irouter(33), Width::Double, cpu0))),
        Reason::ForeignCpu(0)
    );
    assert_eq!(
        reason(access(
            &mut gicd,
            write(irouter(33), Width::Double, 1 << 31)
        )),
        Reason::UnsafeRouting
    );
    assert_eq!(
        reason(access(&mut gicd, write(irouter(34), Width::Double, 0x100))),
        Reason::ForeignIrq(IntId::new(34))
    );
    assert!(gicd.writes().is_empty());
}

#[test]
fn v3_setspi_only_for_owned_spis() {
    let (mut gicd, dist, own) = v3_setup(ForeignWrites::Ignore);
    let topology = Topology::new(&MPIDRS);
    for irq in [33, 34, 25] {
        dist.access(
            &mut gicd,
            &own,
            V3_BY,
            &topology,
            write(v3::GICD_SETSPI_NSR, Width::Word, irq),
        )
        .unwrap();
    }
    assert_eq!(gicd.writes(), [(v3::GICD_SETSPI_NSR, 33)]);
}

#[test]
fn v3_ctlr() {
    let (mut gicd, dist, own) = v3_setup(ForeignWrites::Ignore);
    let topology = Topology::new(&MPIDRS);
    let root = Accessor {
        cell: ROOT,
        cpus: CpuSet::from_bits(0b11),
        cpu: 0,
    };
    dist.access(
        &mut gicd,
        &own,
        V3_BY,
        &topology,
        write(v3::GICD_CTLR, Width::Word, 0x13),
    )
    .unwrap();
    assert_eq!(gicd.get(v3::GICD_CTLR), 0);
    dist.access(
        &mut gicd,
        &own,
        root,
        &topology,
        write(v3::GICD_CTLR, Width::Word, 0xff),
    )
    .unwrap();
    assert_eq!(gicd.get(v3::GICD_CTLR), 0x13);
    dist.access(
        &mut gicd,
        &own,
        root,
        &topology,
        write(v3::GICD_CTLR, Width::Word, 0),
    )
    .unwrap();
    assert_eq!(gicd.get(v3::GICD_CTLR), 0x13);
}

const STRIDE: usize = Redistributors::GICV3_STRIDE;

fn gicr_setup() -> FakeGic {
    let mut gicr = FakeGic::new();
    for (cpu, mpidr) in MPIDRS.iter().enumerate() {
        let last = if cpu == MPIDRS.len() - 1 { 1 << 4 } else { 0 };
        // PLPIS | Last | Processor_Number, affinity above.
        gicr.set(
            cpu * STRIDE + gicr::TYPER,
            1 | last | (cpu as u32) << 8 | 0xF800_0000,
        );
        gicr.set(
            cpu * STRIDE + gicr::TYPER + 4,
            Mpidr::bits(*mpidr) as u32 & 0xff_ffff | ((mpidr.aff3() as u32) << 24),
        );
        gicr.set(cpu * STRIDE + 0xFFE8, 0x3B);
    }
    gicr
}

#[test]
fn redistributors_of_other_cpus_are_identification_only() {
    let mut gicr = gicr_setup();
    let own = ownership(256);
    let topology = Topology::new(&MPIDRS);
    let rd = Redistributors::new(STRIDE, ForeignWrites::Ignore);
    let access = |gicr: &mut FakeGic, a| rd.access(gicr, &own, V3_BY, &topology, a);
    // Any CPU's GICR_TYPER and ID registers: readable (kernels scan for their own).
    assert_eq!(
        access(&mut gicr, read(gicr::TYPER, Width::Double)),
        Ok(Outcome::Read(0))
    );
    assert_eq!(
        access(&mut gicr, read(5 * STRIDE + gicr::TYPER, Width::Double)),
        Ok(Outcome::Read(0x0102_0012_0000_0510))
    );
    assert_eq!(
        access(&mut gicr, read(STRIDE + gicr::TYPER + 4, Width::Word)),
        Ok(Outcome::Read(0x1))
    );
    assert_eq!(
        access(&mut gicr, read(STRIDE + 0xFFE8, Width::Word)),
        Ok(Outcome::Read(0x3B))
    );
    // Anything else of CPU 0 or 1: a violation.
    for a in [
        read(gicr::WAKER, Width::Word),
        write(STRIDE + gicr::SGI_BASE + 0x100, Width::Word, 1),
        read(gicr::SGI_BASE + 0x400, Width::Byte),
        read(gicr::CTLR, Width::Word),
    ] {
        let error = access(&mut gicr, a).unwrap_err();
        assert_eq!(error.block, Block::Redistributors);
        assert!(matches!(error.reason, Reason::ForeignCpu(0 | 1)));
    }
    // Beyond the last redistributor.
    assert_eq!(
        access(&mut gicr, read(6 * STRIDE, Width::Word))
            .unwrap_err()
            .reason,
        Reason::ReservedOffset
    );
    assert!(gicr.writes().is_empty());
}

#[test]
fn zero_stride_redistributors_reject_everything_without_panicking() {
    let mut gicr = gicr_setup();
    let own = ownership(256);
    let topology = Topology::new(&MPIDRS);
    let rd = Redistributors::new(0, ForeignWrites::Ignore);
    for a in [
        read(gicr::TYPER, Width::Double),
        write(gicr::WAKER, Width::Word, 0),
    ] {
        let error = rd.access(&mut gicr, &own, V3_BY, &topology, a).unwrap_err();
        assert_eq!(error.reason, Reason::ReservedOffset);
    }
    assert!(gicr.writes().is_empty());
}

#[test]
fn redistributors_of_own_cpus() {
    let mut gicr = gicr_setup();
    let own = ownership(256);
    let topology = Topology::new(&MPIDRS);
    let rd = Redistributors::new(STRIDE, ForeignWrites::Ignore);
    let access = |gicr: &mut FakeGic, a| rd.access(gicr, &own, V3_BY, &topology, a);
    let frame = 3 * STRIDE;
    let sgi = frame + gicr::SGI_BASE;
    // Enable everything: the hypervisor's SGI 15 and PPI 25 stay untouched.
    access(
        &mut gicr,
        write(sgi + gicr::ISENABLER0, Width::Word, u64::MAX),
    )
    .unwrap();
    assert_eq!(
        gicr.get(sgi + gicr::ISENABLER0),
        !(1 << HV_SGI | 1 << MAINTENANCE)
    );
    // Priority of PPI 25 (byte 25 = IPRIORITYR6 byte 1) is hidden; PPI 27's is not.
    gicr.set(sgi + gicr::IPRIORITYR + 24, 0x0000_a000);
    assert_eq!(
        access(&mut gicr, read(sgi + gicr::IPRIORITYR + 25, Width::Byte)),
        Ok(Outcome::Read(0))
    );
    access(
        &mut gicr,
        write(sgi + gicr::IPRIORITYR + 27, Width::Byte, 0x80),
    )
    .unwrap();
    assert_eq!(gicr.get(sgi + gicr::IPRIORITYR + 24), 0x8000_a000);
    // ICFGR1 = PPIs 16..32, two bits each; PPI 25 at [19:18].
    access(
        &mut gicr,
        write(sgi + gicr::ICFGR0 + 4, Width::Word, u64::MAX),
    )
    .unwrap();
    assert_eq!(gicr.get(sgi + gicr::ICFGR0 + 4), !(0b11 << 18));
    // GICR_IGROUPR0 and GICR_IGRPMODR0: the group is the hypervisor's (the timer PPI 27
    // stays in Group 1 whatever the cell writes).
    gicr.set(sgi + gicr::IGROUPR0, u32::MAX);
    gicr.clear_log();
    access(
        &mut gicr,
        write(sgi + gicr::IGROUPR0, Width::Word, 0xf5ff_7fff),
    )
    .unwrap();
    access(
        &mut gicr,
        write(sgi + gicr::IGRPMODR0, Width::Word, u64::MAX),
    )
    .unwrap();
    assert!(gicr.writes().is_empty(), "{:?}", gicr.writes());
    assert_eq!(
        access(&mut gicr, read(sgi + gicr::IGROUPR0, Width::Word)),
        Ok(Outcome::Read(u64::from(
            !(1u32 << HV_SGI | 1 << MAINTENANCE)
        )))
    );
    // GICR_WAKER: only ProcessorSleep.
    gicr.set(frame + gicr::WAKER, 0b110);
    access(&mut gicr, write(frame + gicr::WAKER, Width::Word, 0b001)).unwrap();
    assert_eq!(gicr.get(frame + gicr::WAKER), 0b100);
    // CTLR read-only, LPI registers RAZ/WI, extended PPI registers reserved.
    gicr.clear_log();
    access(&mut gicr, write(frame + gicr::CTLR, Width::Word, 1)).unwrap();
    access(&mut gicr, write(frame + 0x70, Width::Double, u64::MAX)).unwrap();
    assert_eq!(
        access(&mut gicr, read(frame + 0x78, Width::Double)),
        Ok(Outcome::Read(0))
    );
    assert!(gicr.writes().is_empty());
    assert_eq!(
        access(&mut gicr, read(sgi + 0x104, Width::Word))
            .unwrap_err()
            .reason,
        Reason::ReservedOffset
    );
    assert_eq!(
        access(&mut gicr, read(sgi + gicr::ISENABLER0, Width::Byte))
            .unwrap_err()
            .reason,
        Reason::BadWidth
    );
}

#[test]
fn sgi1r_decoding_and_filtering() {
    let own = ownership(256);
    let topology = Topology::new(&MPIDRS);
    let filter = |value, policy| v3::filter_sgi1r(value, &own, V3_BY, &topology, policy);
    let sgi1r = |aff3: u64, aff2: u64, aff1: u64, rs: u64, list: u64, intid: u64| {
        aff3 << 48 | rs << 44 | aff2 << 32 | intid << 24 | aff1 << 16 | list
    };
    // Cluster 0.0.1, all 16 targets: CPUs 2 and 3.
    let request = filter(sgi1r(0, 0, 1, 0, 0xffff, 5), ForeignWrites::Ignore).unwrap();
    assert_eq!(request.intid, IntId::new(5));
    assert_eq!(request.targets, CpuSet::from_bits(0b1100));
    // Cluster 0.0.0: CPUs 0 and 1, foreign: nothing left.
    let request = filter(sgi1r(0, 0, 0, 0, 0b11, 5), ForeignWrites::Ignore).unwrap();
    assert!(request.targets.is_empty());
    // 1.2.0, RS = 1, TargetList bits 1 and 2: Aff0 17 (CPU 4, own) and 18 (CPU 5, foreign).
    let request = filter(sgi1r(1, 2, 0, 1, 0b110, 0), ForeignWrites::Ignore).unwrap();
    assert_eq!(request.targets, CpuSet::single(4));
    // IRM = 1: every CPU of the cell but the sender (2).
    let request = filter(1 << 40 | 7 << 24, ForeignWrites::Ignore).unwrap();
    assert_eq!(request.targets, CpuSet::from_bits(0b1_1000));
    // The hypervisor's SGI: dropped.
    let request = filter(1 << 40 | 15 << 24, ForeignWrites::Ignore).unwrap();
    assert!(request.targets.is_empty());
    // Report policy.
    let error = filter(sgi1r(1, 2, 0, 1, 0b110, 0), ForeignWrites::Report).unwrap_err();
    assert_eq!(error.reason, Reason::ForeignCpu(5));
    assert_eq!(error.block, Block::IccSgi1r);
    let error = filter(sgi1r(0, 0, 1, 0, 0b10, 15), ForeignWrites::Report).unwrap_err();
    assert_eq!(error.reason, Reason::ForeignIrq(IntId::new(15)));

    // The physical writes: one per CPU, IRM = 0, RS/TargetList selecting Aff0.
    let request = filter(1 << 40 | 7 << 24, ForeignWrites::Ignore).unwrap();
    let writes: Vec<u64> = request.physical_writes(&topology).collect();
    assert_eq!(
        writes,
        [sgi1r(0, 0, 1, 0, 0b10, 7), sgi1r(1, 2, 0, 1, 0b10, 7)]
    );
}

// ---------------------------------------------------------------- properties

/// The bits of the fake's state word at `offset` that a cell may change: its own fields in
/// the per-interrupt banks of a GICv2 distributor.
fn v2_allowed(offset: usize, own: &IrqOwnership, cpus: CpuSet) -> u32 {
    let (first, bits) = match offset {
        0x080..0x400 => (((offset & 0x7f) * 8) as u32, 1),
        0x400..0x800 => ((offset - 0x400) as u32, 8),
        0x800..0xC00 if offset >= 0x820 => ((offset - 0x800) as u32, 8),
        0xC00..0xD00 => (((offset - 0xC00) * 4) as u32, 2),
        0xF20..0xF30 => ((offset - 0xF20) as u32, 8),
        _ => return 0,
    };
    let _ = cpus;
    (0..32 / bits)
        .filter(|&i| own.owns(CELL, IntId::new(first + i)))
        .fold(0, |mask, i| {
            mask | (((1u64 << bits) - 1) as u32) << (i * bits)
        })
}

fn assert_only_allowed_changes(
    before: &BTreeMap<usize, u32>,
    after: &BTreeMap<usize, u32>,
    allowed: impl Fn(usize) -> u32,
) -> Result<(), TestCaseError> {
    for (&offset, &new) in after {
        let old = before.get(&offset).copied().unwrap_or(0);
        let changed = old ^ new;
        prop_assert_eq!(
            changed & !allowed(offset),
            0,
            "offset {:#x}: {:#x} -> {:#x}",
            offset,
            old,
            new
        );
    }
    Ok(())
}

fn any_width() -> impl Strategy<Value = Width> {
    prop_oneof![
        Just(Width::Byte),
        Just(Width::Half),
        Just(Width::Word),
        Just(Width::Double)
    ]
}

fn any_access(max: usize) -> impl Strategy<Value = MmioAccess> {
    (0..max, any_width(), any::<bool>(), any::<u64>()).prop_map(|(offset, width, w, value)| {
        let offset = offset & !(width.bytes() - 1) | (offset & 3 & (width.bytes() - 1));
        if w {
            MmioAccess::write(offset, width, value)
        } else {
            MmioAccess::read(offset, width)
        }
    })
}

fn random_ownership(spis: &[u8]) -> IrqOwnership {
    let mut own = IrqOwnership::new(256);
    own.reserve_private(IntId::new(HV_SGI));
    own.reserve_private(IntId::new(MAINTENANCE));
    for (i, &who) in spis.iter().enumerate() {
        let irq = IntId::new(32 + i as u32);
        match who % 3 {
            0 => own.assign(CELL, irq).unwrap(),
            1 => own.assign(ROOT, irq).unwrap(),
            _ => {}
        }
    }
    own
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No sequence of GICv2 distributor accesses by a cell changes a field of an interrupt it
    /// does not own, targets an SPI at a foreign CPU, or sends an SGI to a foreign CPU.
    #[test]
    fn v2_cells_never_change_foreign_state(
        spis in proptest::collection::vec(any::<u8>(), 224),
        initial in proptest::collection::vec(any::<u32>(), 0x400),
        accesses in proptest::collection::vec(
            prop_oneof![any_access(0x1000), any_access(0x1000).prop_map(|a| MmioAccess { offset: 0x80 + a.offset % 0xc80, ..a })],
            1..40,
        ),
        policy in prop_oneof![Just(ForeignWrites::Ignore), Just(ForeignWrites::Report)],
    ) {
        let own = random_ownership(&spis);
        let mut gicd = FakeGic::new();
        for (word, value) in initial.into_iter().enumerate() {
            if word * 4 != v2::GICD_SGIR {
                gicd.set(word * 4, value);
            }
        }
        gicd.set(v2::GICD_TYPER, 0b111);
        let dist = DistributorV2::probe(&mut gicd, ROOT, policy);
        for access in accesses {
            let before = gicd.snapshot();
            let result = dist.access(&mut gicd, &own, BY, access);
            let after = gicd.snapshot();
            if result.is_err() {
                prop_assert_eq!(&before, &after, "a violation changes nothing");
            }
            assert_only_allowed_changes(&before, &after, |o| v2_allowed(o, &own, CELL_CPUS))?;
            // Owned SPI targets changed only to the cell's CPUs.
            for offset in (0x820..0xC00).step_by(4) {
                let changed = before.get(&offset).copied().unwrap_or(0) ^ after.get(&offset).copied().unwrap_or(0);
                for byte in 0..4 {
                    if changed >> (8 * byte) & 0xff != 0 {
                        let targets = after[&offset] >> (8 * byte) & 0xff;
                        prop_assert_eq!(targets & !0b1100, 0);
                    }
                }
            }
        }
        for &sgir in gicd.sgis_sent() {
            prop_assert_eq!(sgir >> 16 & 0xff & !0b1100, 0, "SGIR {:#x}", sgir);
            prop_assert_eq!(sgir >> 24 & 0b11, 0);
            prop_assert_ne!(sgir & 0xf, HV_SGI);
        }
    }

    /// The same for the GICv3 distributor (with GICD_IROUTER) and the redistributors.
    #[test]
    fn v3_cells_never_change_foreign_state(
        spis in proptest::collection::vec(any::<u8>(), 224),
        initial in proptest::collection::vec(any::<u32>(), 0x400),
        accesses in proptest::collection::vec(
            prop_oneof![
                any_access(0x1000).prop_map(|a| (false, a)),
                any_access(0x400).prop_map(|a| (false, MmioAccess { offset: 0x6100 + a.offset, ..a })),
                (0..6usize, any_access(0x1000), any::<bool>()).prop_map(|(cpu, a, sgi)| (true, MmioAccess {
                    offset: cpu * STRIDE + if sgi { gicr::SGI_BASE } else { 0 } + a.offset,
                    ..a
                })),
            ],
            1..40,
        ),
        routes in proptest::collection::vec(0..6usize, 8),
        policy in prop_oneof![Just(ForeignWrites::Ignore), Just(ForeignWrites::Report)],
    ) {
        let own = random_ownership(&spis);
        let topology = Topology::new(&MPIDRS);
        let mut gicd = FakeGic::new();
        let mut gicr = gicr_setup();
        for (word, value) in initial.iter().enumerate() {
            gicd.set(word * 4, *value);
            gicr.set(3 * STRIDE + gicr::SGI_BASE + word * 4, *value);
            gicr.set(STRIDE + gicr::SGI_BASE + word * 4, *value);
        }
        for (i, &cpu) in routes.iter().enumerate() {
            gicd.set(irouter(32 + 7 * i), MPIDRS[cpu].bits() as u32);
        }
        gicd.set(v3::GICD_TYPER, 0b111);
        let dist = DistributorV3::probe(&mut gicd, ROOT, policy);
        let rd = Redistributors::new(STRIDE, policy);
        let dist_allowed = |offset: usize| -> u32 {
            match offset {
                0x6100..0x7FE0 if own.owns(CELL, IntId::new(((offset - 0x6000) / 8) as u32)) => u32::MAX,
                0x6100..0x7FE0 => 0,
                0x0800..0x0C00 | 0x0F00..0x1000 => 0,
                0x0D00..0x0D80 => v2_allowed(offset - 0xD00 + 0x80, &own, V3_CPUS),
                _ if v2_allowed(offset, &own, V3_CPUS) != 0 => {
                    // No INTID below 32 through the distributor.
                    let first = match offset {
                        0x080..0x400 => (offset & 0x7f) * 8,
                        0x400..0x800 => offset - 0x400,
                        _ => (offset - 0xC00) * 4,
                    };
                    if first < 32 { 0 } else { v2_allowed(offset, &own, V3_CPUS) }
                }
                _ => 0,
            }
        };
        let rd_allowed = |offset: usize| -> u32 {
            let cpu = offset / STRIDE;
            let local = offset % STRIDE;
            if !V3_CPUS.contains(cpu) {
                return 0;
            }
            match local {
                gicr::WAKER => 0b10,
                0x1_0080..0x1_0084 | 0x1_0100..0x1_0104 | 0x1_0200..0x1_0204 | 0x1_0300..0x1_0304
                | 0x1_0400..0x1_0420 | 0x1_0C00..0x1_0C08 => v2_allowed(local - gicr::SGI_BASE, &own, V3_CPUS),
                0x1_0D00 => v2_allowed(0x80, &own, V3_CPUS),
                _ => 0,
            }
        };
        for (redistributor, access) in accesses {
            let (before_d, before_r) = (gicd.snapshot(), gicr.snapshot());
            let result = if redistributor {
                rd.access(&mut gicr, &own, V3_BY, &topology, access)
            } else {
                dist.access(&mut gicd, &own, V3_BY, &topology, access)
            };
            let (after_d, after_r) = (gicd.snapshot(), gicr.snapshot());
            if result.is_err() {
                prop_assert_eq!(&before_d, &after_d, "a violation changes nothing");
                prop_assert_eq!(&before_r, &after_r, "a violation changes nothing");
            }
            assert_only_allowed_changes(&before_d, &after_d, dist_allowed)?;
            assert_only_allowed_changes(&before_r, &after_r, rd_allowed)?;
            // Every changed route names a CPU of the cell.
            for irq in 32..256 {
                let offset = irouter(irq);
                let route = |s: &BTreeMap<usize, u32>| {
                    u64::from(s.get(&(offset + 4)).copied().unwrap_or(0)) << 32 | u64::from(s.get(&offset).copied().unwrap_or(0))
                };
                if route(&before_d) != route(&after_d) {
                    let cpu = topology.cpu_of(Mpidr::from_register(route(&after_d)));
                    prop_assert!(cpu.is_some_and(|cpu| V3_CPUS.contains(cpu)));
                    prop_assert_eq!(route(&after_d) & 1 << 31, 0);
                }
            }
        }
    }

    /// Any ICC_SGI1R_EL1 value leaves only the cell's CPUs as targets.
    #[test]
    fn sgi1r_targets_stay_in_the_cell(value in any::<u64>(), spis in proptest::collection::vec(any::<u8>(), 224)) {
        let own = random_ownership(&spis);
        let topology = Topology::new(&MPIDRS);
        if let Ok(request) = v3::filter_sgi1r(value, &own, V3_BY, &topology, ForeignWrites::Ignore) {
            prop_assert!(request.targets.is_subset_of(V3_CPUS));
            prop_assert!(!request.targets.contains(2) || value & 1 << 40 == 0);
        }
    }

    /// Encoding then decoding a list register gives it back.
    #[test]
    fn lr_round_trip(vintid in 0u32..1020, pintid in proptest::option::of(16u32..1020), priority in any::<u8>(), group1 in any::<bool>(), state in 0u8..4) {
        let state = [LrState::Invalid, LrState::Pending, LrState::Active, LrState::PendingActive][state as usize];
        let irq = VirtualIrq { vintid, pintid, priority, group1, source_cpu: 0 };
        let lr = ListRegister { irq, state };
        prop_assert_eq!(LrFormat::V3.decode(LrFormat::V3.encode(&lr).unwrap()), lr);
        let v2 = ListRegister { irq: VirtualIrq { priority: priority & 0xf8, ..irq }, state };
        prop_assert_eq!(LrFormat::V2.decode(LrFormat::V2.encode(&lr).unwrap()), v2);
    }
}

#[test]
fn violations_and_ownership_errors_say_what_and_where() {
    use crate::OwnershipError;
    use std::string::ToString;
    let violation = Violation {
        cell: CellId::new(1),
        block: Block::Distributor,
        access: MmioAccess::write(0x104, Width::Word, 1),
        reason: Reason::ForeignIrq(IntId::new(40)),
    };
    assert_eq!(
        violation.to_string(),
        "cell 1: write of 0x1 (4 bytes) at offset 0x104 of the GIC distributor: interrupt 40 is not the cell's"
    );
    let read = Violation {
        access: MmioAccess::read(0x428, Width::Half),
        reason: Reason::BadWidth,
        ..violation
    };
    assert_eq!(
        read.to_string(),
        "cell 1: read (2 bytes) at offset 0x428 of the GIC distributor: the register does not take this width or alignment"
    );
    let error: &dyn core::error::Error = &OwnershipError::AlreadyOwned {
        irq: IntId::new(40),
        owner: CellId::new(2),
    };
    assert_eq!(error.to_string(), "SPI 40 belongs to cell 2 already");
    assert_eq!(
        OwnershipError::NotSpi(IntId::new(27)).to_string(),
        "interrupt 27 is an SGI or PPI: only SPIs change owner"
    );
}

#[test]
fn one_distributor_api_for_both_versions() {
    use crate::{Distributor, Version};
    let topology = Topology::new(&MPIDRS);
    for version in [Version::V2, Version::V3] {
        let (mut gicd, by, typer) = match version {
            Version::V2 => {
                let (gicd, _, _) = v2_setup(ForeignWrites::Ignore);
                (gicd, BY, v2::GICD_TYPER)
            }
            Version::V3 => {
                let (gicd, _, _) = v3_setup(ForeignWrites::Ignore);
                (gicd, V3_BY, v3::GICD_TYPER)
            }
        };
        let dist = Distributor::probe(&mut gicd, version, ROOT, ForeignWrites::Report);
        assert_eq!(dist.version(), version);
        assert_eq!(dist.implemented_irqs(), 256);
        let own = ownership(dist.implemented_irqs());
        // What the version's own emulation answers.
        let expected = match version {
            Version::V2 => {
                let (mut gicd, v2, _) = v2_setup(ForeignWrites::Report);
                v2.access(&mut gicd, &own, by, read(typer, Width::Word))
            }
            Version::V3 => {
                let (mut gicd, v3, _) = v3_setup(ForeignWrites::Report);
                v3.access(&mut gicd, &own, by, &topology, read(typer, Width::Word))
            }
        };
        let got = dist.access(&mut gicd, &own, by, &topology, read(typer, Width::Word));
        assert_eq!(got, expected, "{version:?}");
        // An SPI of the root cell (32) is the cell's to enable on neither version.
        let error = dist
            .access(&mut gicd, &own, by, &topology, write(0x104, Width::Word, 1))
            .unwrap_err();
        assert_eq!(error.reason, crate::Reason::ForeignIrq(IntId::new(32)));
    }
}
