//! The cell-facing GIC emulation (GICv2 distributor, GICv3 distributor and redistributors,
//! `GICD_SGIR` and `ICC_SGI1R_EL1` filtering) against `FakeGic`, on a machine the fuzzer
//! chooses: GIC version, implemented INTIDs, CPUs and their affinities, a root cell and 1-3
//! other cells sharing the CPUs, SPI owners, the private interrupts the hypervisor reserves,
//! the `ForeignWrites` policy, the redistributor stride and the registers' initial contents.
//! Then a sequence of accesses (block, offset, width, read or write, value, accessing CPU;
//! the accessing cell is the one that owns the CPU).
//!
//! Checked after every access:
//! - no panic; a write answers `Written`, a read `Read`;
//! - every field of every interrupt the cell does not own is unchanged, in every per-INTID
//!   bank (group, enable, pending, active, priority, targets, config, group modifier, SGI
//!   pending, `GICD_IROUTER<n>`); through a GICv3 distributor no field of INTIDs 0..32
//!   changes; `GICD_ITARGETSR0..7` never change;
//! - a changed target or route names CPUs of the cell only (and no 1-of-N routing);
//! - a changed priority is not numerically below `HIGHEST_CELL_PRIORITY`;
//! - the redistributors of CPUs outside the cell are unchanged, and of the cell's own only
//!   `GICR_WAKER.ProcessorSleep` and the SGI_base banks of unreserved INTIDs change;
//! - the hypervisor's reserved SGIs/PPIs are unchanged;
//! - `GICD_CTLR` changes only by the root cell setting enable bits;
//! - any other register is unchanged;
//! - reads show no field of a foreign interrupt and no foreign redistributor beyond its
//!   identification registers;
//! - SGIs sent reach only the cell's CPUs, never with a reserved INTID;
//! - a `Violation` leaves every register unchanged and sends nothing;
//! - separately, [`check_group_read_only`]: no cell changes any line's group (`IGROUPR`,
//!   `GICR_IGROUPR0`, `IGRPMODR`), not even its own. Set `GIC_FUZZ_ALLOW_GROUP_WRITES=1` to
//!   skip only this check (for an emulation that still lets cells write their groups).

#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use cellvisor_gic::fake::FakeGic;
use cellvisor_gic::v2::{Accessor, DistributorV2};
use cellvisor_gic::v3::{self, DistributorV3, Redistributors};
use cellvisor_gic::{
    AccessKind, CellId, CpuSet, ForeignWrites, IntId, IrqOwnership, MmioAccess, Mpidr, Outcome,
    Topology, Width, HIGHEST_CELL_PRIORITY,
};
use libfuzzer_sys::fuzz_target;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Version {
    V2,
    V3,
}

/// A per-INTID register bank, as the fake stores it (set/clear pairs under the set offset).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BankKind {
    Group,
    Enable,
    Pending,
    Active,
    Priority,
    Targets,
    Config,
    GroupModifier,
    SgiPending,
}

/// The bank holding the register word at `word` of a distributor: kind, first INTID, bits
/// per INTID. Clear registers map to their set register's state.
fn distributor_bank(version: Version, word: usize) -> Option<(BankKind, u32, u32)> {
    let first = |base: usize, per_byte: usize| ((word - base) * per_byte) as u32;
    Some(match word {
        0x080..0x100 => (BankKind::Group, first(0x080, 8), 1),
        0x100..0x200 => (BankKind::Enable, first(0x100 + (word & 0x80), 8), 1),
        0x200..0x300 => (BankKind::Pending, first(0x200 + (word & 0x80), 8), 1),
        0x300..0x400 => (BankKind::Active, first(0x300 + (word & 0x80), 8), 1),
        0x400..0x800 => (BankKind::Priority, first(0x400, 1), 8),
        0x800..0xC00 if version == Version::V2 => (BankKind::Targets, first(0x800, 1), 8),
        0xC00..0xD00 => (BankKind::Config, first(0xC00, 4), 2),
        0xD00..0xD80 if version == Version::V3 => (BankKind::GroupModifier, first(0xD00, 8), 1),
        0xF10..0xF30 if version == Version::V2 => (BankKind::SgiPending, (word & 0xf) as u32, 8),
        _ => return None,
    })
}

/// The bank at `local` in a redistributor's SGI_base frame (offset from SGI_base).
fn sgi_frame_bank(local: usize) -> Option<(BankKind, u32, u32)> {
    Some(match local {
        0x080 => (BankKind::Group, 0, 1),
        0x100 | 0x180 => (BankKind::Enable, 0, 1),
        0x200 | 0x280 => (BankKind::Pending, 0, 1),
        0x300 | 0x380 => (BankKind::Active, 0, 1),
        0x400..0x420 => (BankKind::Priority, (local - 0x400) as u32, 8),
        0xC00..0xC08 => (BankKind::Config, ((local - 0xC00) * 4) as u32, 2),
        0xD00 => (BankKind::GroupModifier, 0, 1),
        _ => return None,
    })
}

const GICD_CTLR: usize = 0x000;
const GICR_WAKER: usize = 0x014;
const SGI_BASE: usize = 0x1_0000;

/// Deterministic filler for the registers' initial contents (splitmix64).
struct Filler(u64);

impl Filler {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn word(&mut self) -> u32 {
        self.next() as u32
    }
}

struct Machine {
    version: Version,
    policy: ForeignWrites,
    /// The cell (index, 0 = root) of each CPU.
    cpu_owner: Vec<u16>,
    mpidrs: Vec<Mpidr>,
    own: IrqOwnership,
    reserved: u32,
    stride: usize,
    gicd: FakeGic,
    gicr: FakeGic,
}

impl Machine {
    fn build(u: &mut Unstructured<'_>) -> Result<Self> {
        let version = if u.arbitrary()? {
            Version::V2
        } else {
            Version::V3
        };
        let lines: u32 = u.int_in_range(0..=31)?;
        let cpus: usize = u.int_in_range(1..=8)?;
        let cells: u16 = u.int_in_range(2..=4)?;
        let mut cpu_owner = Vec::with_capacity(cpus);
        for _ in 0..cpus {
            cpu_owner.push(u.int_in_range(0..=cells - 1)?);
        }
        let layout: u8 = u.int_in_range(0..=3)?;
        let mpidrs = (0..cpus as u8)
            .map(|i| match layout {
                0 => Mpidr::new(0, 0, 0, i),
                1 => Mpidr::new(0, 0, i / 4, i % 4),
                2 => Mpidr::new(1, i / 2, 0, i % 2),
                _ => Mpidr::new(0, 0, 0, 16 * (i % 2) + i),
            })
            .collect();
        let policy = if u.arbitrary()? {
            ForeignWrites::Ignore
        } else {
            ForeignWrites::Report
        };
        let stride = if u.arbitrary()? {
            Redistributors::GICV3_STRIDE
        } else {
            Redistributors::GICV4_STRIDE
        };
        // The hypervisor's SGI, usually the maintenance interrupt, and a few more at random.
        let hv_sgi: u32 = u.int_in_range(0..=15)?;
        let mut reserved = 1 << hv_sgi;
        if u.arbitrary()? {
            reserved |= 1 << 25;
        }
        reserved |= u.arbitrary::<u32>()? & u.arbitrary::<u32>()? & u.arbitrary::<u32>()?;
        let seed: u64 = u.arbitrary()?;

        let mut gicd = FakeGic::new();
        let mut fill = Filler(seed);
        // GICD_TYPER: the fuzzer's ITLinesNumber, other bits at random (the emulators hide
        // what cells must not see); GICD_IIDR at random.
        gicd.set(0x004, fill.word() & !0x1f | lines);
        gicd.set(0x008, fill.word());
        let implemented = match version {
            Version::V2 => {
                DistributorV2::probe(&mut gicd, CellId::new(0), policy).implemented_irqs()
            }
            Version::V3 => {
                DistributorV3::probe(&mut gicd, CellId::new(0), policy).implemented_irqs()
            }
        };
        let mut own = IrqOwnership::new(implemented);
        for irq in 0..32 {
            if reserved & 1 << irq != 0 {
                own.reserve_private(IntId::new(irq));
            }
        }
        // SPI owners in runs: (length, owner or none).
        let mut spi = IntId::SPI_START;
        while spi < implemented {
            let len: u32 = u.int_in_range(1..=64)?;
            let owner: u16 = u.int_in_range(0..=cells)?;
            for irq in spi..(spi + len).min(implemented) {
                if owner < cells {
                    // Each SPI is assigned once: this cannot fail.
                    own.assign(CellId::new(u32::from(owner)), IntId::new(irq)).unwrap();
                }
            }
            spi += len;
        }

        // Every bank word of the implemented INTIDs and one register beyond, random.
        let beyond = implemented + 32;
        let mut word = 0x080;
        while word < 0xD80 {
            if let Some((_, first, _)) = distributor_bank(version, word) {
                let is_clear = (0x100..0x400).contains(&word) && word & 0x80 != 0;
                if first < beyond && !is_clear {
                    gicd.set(word, fill.word());
                }
            }
            word += 4;
        }
        match version {
            Version::V2 => {
                gicd.set(0x000, fill.word() & 1);
                for word in (0xF20..0xF30).step_by(4) {
                    gicd.set(word, fill.word());
                }
                for word in (0xFD0..0x1000).step_by(4) {
                    gicd.set(word, fill.word());
                }
            }
            Version::V3 => {
                gicd.set(0x000, fill.word() & 0b1_0011);
                for word in (0xFFD0..0x1_0000).step_by(4) {
                    gicd.set(word, fill.word());
                }
                let mpidrs: &Vec<Mpidr> = &mpidrs;
                for irq in IntId::SPI_START..beyond.min(IntId::SPI_END) {
                    let random = fill.next();
                    let route = match random % 4 {
                        0 => random >> 8 & 0xff_80ff_ffff,
                        _ => mpidrs[(random >> 8) as usize % mpidrs.len()].bits(),
                    };
                    let offset = v3::GICD_IROUTER + 8 * irq as usize;
                    gicd.set(offset, route as u32);
                    gicd.set(offset + 4, (route >> 32) as u32);
                }
            }
        }

        let mut gicr = FakeGic::new();
        if version == Version::V3 {
            let mpidrs: &Vec<Mpidr> = &mpidrs;
            for (cpu, mpidr) in mpidrs.iter().enumerate() {
                let frame = cpu * stride;
                let last = if cpu == mpidrs.len() - 1 { 1 << 4 } else { 0 };
                gicr.set(frame, fill.word());
                gicr.set(frame + 0x4, fill.word());
                gicr.set(
                    frame + 0x8,
                    fill.word() & !(1 << 4) | last | (cpu as u32) << 8,
                );
                let affinity = mpidr.bits();
                gicr.set(
                    frame + 0xC,
                    (affinity & 0xff_ffff | (affinity >> 32) << 24) as u32,
                );
                gicr.set(frame + GICR_WAKER, fill.word() & 0b110);
                for local in [0x80, 0x100, 0x200, 0x300, 0xC00, 0xC04, 0xD00] {
                    gicr.set(frame + SGI_BASE + local, fill.word());
                }
                for local in (0x400..0x420).step_by(4) {
                    gicr.set(frame + SGI_BASE + local, fill.word());
                }
                for local in (0xFFD0..0x1_0000).step_by(4) {
                    gicr.set(frame + local, fill.word());
                }
            }
        }

        Ok(Self {
            version,
            policy,
            cpu_owner,
            mpidrs,
            own,
            reserved,
            stride,
            gicd,
            gicr,
        })
    }

    fn accessor(&self, cpu: usize) -> Accessor {
        let cell = self.cpu_owner[cpu];
        let cpus = self
            .cpu_owner
            .iter()
            .enumerate()
            .filter(|&(_, &owner)| owner == cell)
            .fold(CpuSet::empty(), |mut set, (cpu, _)| {
                set.insert(cpu);
                set
            });
        Accessor {
            cell: CellId::new(u32::from(cell)),
            cpus,
            cpu,
        }
    }
}

/// Where an access goes.
#[derive(Clone, Copy, Debug)]
enum Target {
    Distributor,
    Redistributors,
    Sgi1r,
}

fn width(u: &mut Unstructured<'_>) -> Result<Width> {
    Ok(match u.int_in_range(0..=3)? {
        0 => Width::Byte,
        1 => Width::Half,
        2 => Width::Word,
        _ => Width::Double,
    })
}

fn access(u: &mut Unstructured<'_>, m: &Machine) -> Result<(Target, MmioAccess, usize)> {
    let cpu = u.int_in_range(0..=m.cpu_owner.len() - 1)?;
    let choice: u8 = u.int_in_range(0..=3)?;
    let target = match (m.version, choice) {
        (Version::V3, 1) => Target::Redistributors,
        (Version::V3, 2) => Target::Sgi1r,
        _ => Target::Distributor,
    };
    let mut offset = match target {
        Target::Distributor if choice == 3 && m.version == Version::V3 => {
            v3::GICD_IROUTER + u.int_in_range(0..=0x1fff)?
        }
        Target::Distributor => usize::from(u.arbitrary::<u16>()?),
        Target::Redistributors => {
            let frame = u.int_in_range(0..=m.mpidrs.len())?;
            let sgi_base = if u.arbitrary()? { SGI_BASE } else { 0 };
            frame * m.stride + sgi_base + usize::from(u.arbitrary::<u16>()?)
        }
        Target::Sgi1r => 0,
    };
    let width = match target {
        Target::Sgi1r => Width::Double,
        _ => width(u)?,
    };
    if u.arbitrary()? {
        offset &= !(width.bytes() - 1);
    }
    let access = if matches!(target, Target::Sgi1r) || u.arbitrary()? {
        MmioAccess::write(offset, width, u.arbitrary()?)
    } else {
        MmioAccess::read(offset, width)
    };
    Ok((target, access, cpu))
}

/// A changed group or group-modifier field.
#[derive(Debug)]
struct GroupChange {
    register: &'static str,
    offset: usize,
    irq: u32,
}

fn allow_group_writes() -> bool {
    static ALLOW: OnceLock<bool> = OnceLock::new();
    *ALLOW.get_or_init(|| std::env::var_os("GIC_FUZZ_ALLOW_GROUP_WRITES").is_some_and(|v| v == "1"))
}

/// The group invariant the emulation is moving to: `IGROUPR`, `GICR_IGROUPR0` and `IGRPMODR`
/// are read-only for cells (writes ignored), so no cell ever changes a line's group.
fn check_group_read_only(by: Accessor, access: &MmioAccess, changes: &[GroupChange]) {
    if let Some(change) = changes.first() {
        if allow_group_writes() {
            return;
        }
        panic!(
            "GROUP INVARIANT: cell {} changed the {} field of INTID {} (register {:#x}) with \
             {:?}; groups are the hypervisor's (read-only for cells)",
            by.cell.get(),
            change.register,
            change.irq,
            change.offset,
            access
        );
    }
}

fn changed_keys(
    before: &BTreeMap<usize, u32>,
    after: &BTreeMap<usize, u32>,
) -> Vec<(usize, u32, u32)> {
    let mut keys: Vec<usize> = before.keys().chain(after.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let old = before.get(&key).copied().unwrap_or(0);
            let new = after.get(&key).copied().unwrap_or(0);
            (old != new).then_some((key, old, new))
        })
        .collect()
}

/// The fields of `bank` that changed between `old` and `new`: (INTID, new field value).
fn changed_fields(first: u32, bits: u32, old: u32, new: u32) -> impl Iterator<Item = (u32, u32)> {
    let mask = (1u32 << bits) - 1;
    (0..32 / bits).filter_map(move |i| {
        let at = i * bits;
        ((old ^ new) >> at & mask != 0).then_some((first + i, new >> at & mask))
    })
}

fn bank_name(kind: BankKind, redistributor: bool) -> &'static str {
    match (kind, redistributor) {
        (BankKind::Group, false) => "GICD_IGROUPR",
        (BankKind::Group, true) => "GICR_IGROUPR0",
        (BankKind::GroupModifier, false) => "GICD_IGRPMODR",
        (BankKind::GroupModifier, true) => "GICR_IGRPMODR0",
        _ => "",
    }
}

/// Checks a changed field of a per-INTID bank: the cell may change it, and to what.
#[allow(clippy::too_many_arguments)]
fn check_field(
    kind: BankKind,
    irq: u32,
    value: u32,
    may_change: bool,
    by: Accessor,
    offset: usize,
    redistributor: bool,
    groups: &mut Vec<GroupChange>,
) {
    assert!(
        may_change,
        "cell {} (CPU {}) changed {kind:?} of INTID {irq} it does not own (register {offset:#x}, \
         redistributor: {redistributor})",
        by.cell.get(),
        by.cpu
    );
    match kind {
        BankKind::Priority => assert!(
            value >= u32::from(HIGHEST_CELL_PRIORITY),
            "cell {} set INTID {irq}'s priority to {value:#x}, above the highest cell priority",
            by.cell.get()
        ),
        BankKind::Targets => assert!(
            value & !(by.cpus.bits() as u32) == 0,
            "cell {} targeted SPI {irq} at CPUs {value:#x} outside its own {:?}",
            by.cell.get(),
            by.cpus
        ),
        BankKind::Group | BankKind::GroupModifier => groups.push(GroupChange {
            register: bank_name(kind, redistributor),
            offset,
            irq,
        }),
        _ => {}
    }
}

fn check_distributor(
    m: &Machine,
    by: Accessor,
    topology: &Topology<'_>,
    before: &BTreeMap<usize, u32>,
    after: &BTreeMap<usize, u32>,
    groups: &mut Vec<GroupChange>,
) {
    let root = by.cell == CellId::new(0);
    for (key, old, new) in changed_keys(before, after) {
        if let Some((kind, first, bits)) = distributor_bank(m.version, key) {
            for (irq, value) in changed_fields(first, bits, old, new) {
                let may_change = match (m.version, kind) {
                    // GICD_ITARGETSR0..7 are read-only.
                    (Version::V2, BankKind::Targets) => {
                        irq >= 32 && m.own.owns(by.cell, IntId::new(irq))
                    }
                    (Version::V2, _) => m.own.owns(by.cell, IntId::new(irq)),
                    // Affinity routing: INTIDs 0..32 live in the redistributors.
                    (Version::V3, _) => irq >= 32 && m.own.owns(by.cell, IntId::new(irq)),
                };
                check_field(kind, irq, value, may_change, by, key, false, groups);
            }
            continue;
        }
        match key {
            GICD_CTLR => {
                let enable = match m.version {
                    Version::V2 => 0b11,
                    Version::V3 => 0b1_0011,
                };
                assert!(
                    root,
                    "cell {} changed GICD_CTLR {old:#x} -> {new:#x}",
                    by.cell.get()
                );
                assert!(
                    new & old == old && (old ^ new) & !enable == 0,
                    "the root cell changed GICD_CTLR {old:#x} -> {new:#x}: only enable bits may be set"
                );
            }
            0x6000..0x8000 if m.version == Version::V3 => {
                let irq = ((key - 0x6000) / 8) as u32;
                assert!(
                    irq >= 32 && m.own.owns(by.cell, IntId::new(irq)),
                    "cell {} changed GICD_IROUTER{irq}, an SPI it does not own",
                    by.cell.get()
                );
                let register = key & !7;
                let half =
                    |s: &BTreeMap<usize, u32>, at| u64::from(s.get(&at).copied().unwrap_or(0));
                let route = half(after, register + 4) << 32 | half(after, register);
                assert_eq!(
                    route & 1 << 31,
                    0,
                    "cell {} set 1-of-N routing for SPI {irq}",
                    by.cell.get()
                );
                let cpu = topology.cpu_of(Mpidr::from_register(route));
                assert!(
                    cpu.is_some_and(|cpu| by.cpus.contains(cpu)),
                    "cell {} routed SPI {irq} to {route:#x}, not one of its CPUs {:?}",
                    by.cell.get(),
                    by.cpus
                );
            }
            0x040 | 0x048 if m.version == Version::V3 => {
                // GICD_SETSPI_NSR / GICD_CLRSPI_NSR: the fake stores the INTID written.
                assert!(
                    m.own.owns(by.cell, IntId::new(new)) && IntId::new(new).is_spi(),
                    "cell {} signalled INTID {new} through {key:#x}, not its SPI",
                    by.cell.get()
                );
            }
            _ => panic!(
                "cell {} changed distributor register {key:#x}: {old:#x} -> {new:#x}",
                by.cell.get()
            ),
        }
    }
}

fn check_redistributors(
    m: &Machine,
    by: Accessor,
    before: &BTreeMap<usize, u32>,
    after: &BTreeMap<usize, u32>,
    groups: &mut Vec<GroupChange>,
) {
    for (key, old, new) in changed_keys(before, after) {
        let (cpu, local) = (key / m.stride, key % m.stride);
        assert!(
            by.cpus.contains(cpu),
            "cell {} (CPUs {:?}) changed CPU {cpu}'s redistributor at {local:#x}: {old:#x} -> {new:#x}",
            by.cell.get(),
            by.cpus
        );
        if local == GICR_WAKER {
            assert_eq!(
                (old ^ new) & !0b10,
                0,
                "GICR_WAKER beyond ProcessorSleep changed"
            );
            continue;
        }
        let bank = local.checked_sub(SGI_BASE).and_then(sgi_frame_bank);
        let Some((kind, first, bits)) = bank else {
            panic!(
                "cell {} changed CPU {cpu}'s redistributor register {local:#x}: {old:#x} -> {new:#x}",
                by.cell.get()
            );
        };
        for (irq, value) in changed_fields(first, bits, old, new) {
            let may_change = m.reserved & 1 << irq == 0;
            check_field(kind, irq, value, may_change, by, key, true, groups);
        }
    }
}

/// A read shows no field of an interrupt the cell may not see.
fn check_read(m: &Machine, by: Accessor, target: Target, access: &MmioAccess, value: u64) {
    let visible = |irq: u32, redistributor: bool| match (m.version, redistributor) {
        (_, true) => m.reserved & 1 << irq == 0,
        (Version::V2, false) => m.own.owns(by.cell, IntId::new(irq)),
        (Version::V3, false) => irq >= 32 && m.own.owns(by.cell, IntId::new(irq)),
    };
    let (bank, redistributor) = match target {
        Target::Distributor => {
            if m.version == Version::V3 && (0x6000..0x8000).contains(&access.offset) {
                let irq = ((access.offset - 0x6000) / 8) as u32;
                assert!(
                    value == 0 || visible(irq, false),
                    "cell {} read {value:#x} from the route of SPI {irq} it does not own",
                    by.cell.get()
                );
                return;
            }
            (distributor_bank(m.version, access.offset & !3), false)
        }
        Target::Redistributors => {
            let (cpu, local) = (access.offset / m.stride, access.offset % m.stride);
            if !by.cpus.contains(cpu) {
                assert!(
                    matches!(local, 0x4..0x10 | 0xFFD0..0x1_0000),
                    "cell {} read CPU {cpu}'s redistributor register {local:#x}",
                    by.cell.get()
                );
                return;
            }
            (
                local
                    .checked_sub(SGI_BASE)
                    .and_then(|l| sgi_frame_bank(l & !3)),
                true,
            )
        }
        Target::Sgi1r => return,
    };
    let Some((kind, first, bits)) = bank else {
        return;
    };
    let shifted = value << (8 * (access.offset & 3));
    let mask = (1u64 << bits) - 1;
    for i in 0..32 / bits {
        let irq = first + i;
        let field = shifted >> (i * bits) & mask;
        assert!(
            field == 0 || visible(irq, redistributor),
            "cell {} read {kind:?} {field:#x} of INTID {irq} it may not see ({access:?})",
            by.cell.get()
        );
    }
}

fn check_sgis(m: &Machine, by: Accessor, sent: &[u32]) {
    for &sgir in sent {
        let intid = sgir & 0xf;
        let targets = sgir >> 16 & 0xff;
        assert_eq!(
            sgir >> 24 & 0b11,
            0,
            "GICD_SGIR {sgir:#x} with a target filter"
        );
        assert_ne!(targets, 0, "GICD_SGIR {sgir:#x} to nobody");
        assert_eq!(
            u64::from(targets) & !by.cpus.bits(),
            0,
            "cell {} sent SGI {intid} to CPUs {targets:#x} outside {:?}",
            by.cell.get(),
            by.cpus
        );
        assert_eq!(
            m.reserved & 1 << intid,
            0,
            "cell {} sent reserved SGI {intid}",
            by.cell.get()
        );
    }
}

fn check_sgi1r(m: &Machine, by: Accessor, topology: &Topology<'_>, value: u64) {
    let result = v3::filter_sgi1r(value, &m.own, by, topology, m.policy);
    let Ok(request) = result else {
        return;
    };
    assert!(
        request.targets.is_subset_of(by.cpus),
        "ICC_SGI1R_EL1 {value:#x} by cell {} reaches {:?}",
        by.cell.get(),
        request.targets
    );
    if request.targets.is_empty() {
        return;
    }
    assert!(
        m.own.owns(by.cell, request.intid),
        "reserved SGI {:?} sent",
        request.intid
    );
    if value & 1 << 40 != 0 {
        assert!(
            !request.targets.contains(by.cpu),
            "IRM = 1 signalled the sender"
        );
    }
    for write in request.physical_writes(topology) {
        // Decode the hypervisor's own write: Aff3.Aff2.Aff1.(RS * 16 + n) for each bit n.
        assert_eq!(write & 1 << 40, 0);
        let list = write as u16;
        assert_eq!(list.count_ones(), 1, "one CPU per physical write");
        let aff0 = ((write >> 44 & 0xf) as u8) * 16 + list.trailing_zeros() as u8;
        let mpidr = Mpidr::new(
            (write >> 48) as u8,
            (write >> 32) as u8,
            (write >> 16) as u8,
            aff0,
        );
        let cpu = topology.cpu_of(mpidr);
        assert!(
            cpu.is_some_and(|cpu| by.cpus.contains(cpu)),
            "physical SGI to {mpidr:?}"
        );
        assert_eq!((write >> 24 & 0xf) as u32, request.intid.get());
    }
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mut m = Machine::build(&mut u)?;
    let mpidrs = m.mpidrs.clone();
    let topology = Topology::new(&mpidrs);
    let root = CellId::new(0);
    let dist_v2 = DistributorV2::probe(&mut m.gicd, root, m.policy);
    let dist_v3 = DistributorV3::probe(&mut m.gicd, root, m.policy);
    let redistributors = Redistributors::new(m.stride, m.policy);
    for _ in 0..64 {
        if u.is_empty() {
            break;
        }
        let (target, access, cpu) = access(&mut u, &m)?;
        let by = m.accessor(cpu);
        let (before_d, before_r) = (m.gicd.snapshot(), m.gicr.snapshot());
        let sgis_before = m.gicd.sgis_sent().len();
        let result = match (target, m.version) {
            (Target::Distributor, Version::V2) => dist_v2.access(&mut m.gicd, &m.own, by, access),
            (Target::Distributor, Version::V3) => {
                dist_v3.access(&mut m.gicd, &m.own, by, &topology, access)
            }
            (Target::Redistributors, _) => {
                redistributors.access(&mut m.gicr, &m.own, by, &topology, access)
            }
            (Target::Sgi1r, _) => {
                let AccessKind::Write(value) = access.kind else {
                    unreachable!("ICC_SGI1R_EL1 accesses are writes");
                };
                check_sgi1r(&m, by, &topology, value);
                continue;
            }
        };
        let (after_d, after_r) = (m.gicd.snapshot(), m.gicr.snapshot());
        let sent = &m.gicd.sgis_sent()[sgis_before..];
        match result {
            Err(violation) => {
                assert_eq!(violation.cell, by.cell);
                assert!(
                    before_d == after_d,
                    "a violation ({violation:?}) changed the distributor"
                );
                assert!(
                    before_r == after_r,
                    "a violation ({violation:?}) changed a redistributor"
                );
                assert!(sent.is_empty(), "a violation ({violation:?}) sent an SGI");
                continue;
            }
            Ok(Outcome::Read(value)) => {
                assert_eq!(access.kind, AccessKind::Read);
                assert_eq!(
                    value & !access_mask(access.width),
                    0,
                    "read wider than the access"
                );
                check_read(&m, by, target, &access, value);
            }
            Ok(Outcome::Written) => {
                assert!(matches!(access.kind, AccessKind::Write(_)));
            }
        }
        let mut groups = Vec::new();
        check_distributor(&m, by, &topology, &before_d, &after_d, &mut groups);
        check_redistributors(&m, by, &before_r, &after_r, &mut groups);
        check_sgis(&m, by, sent);
        check_group_read_only(by, &access, &groups);
    }
    Ok(())
}

fn access_mask(width: Width) -> u64 {
    match width {
        Width::Double => u64::MAX,
        _ => (1u64 << (8 * width.bytes())) - 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
