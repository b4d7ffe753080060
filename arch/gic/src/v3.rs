//! GICv3 partitioning: distributor emulation ([`DistributorV3`]), redistributor access policy
//! ([`Redistributors`]) and `ICC_SGI1R_EL1` filtering ([`filter_sgi1r`]).
//!
//! Register maps: IHI 0069 §12.8 (distributor, Table 12-25), §12.10 (redistributor RD_base
//! and SGI_base frames). Cells run with affinity routing (`GICD_CTLR.ARE_NS` = 1), as every
//! GICv3 kernel does; the legacy-mode registers read as zero.

use crate::access::{
    AccessKind, Block, ForeignWrites, MmioAccess, Outcome, Reason, Violation, Width,
};
use crate::cpu::{CellId, CpuSet, Mpidr, Topology};
use crate::ownership::{IntId, IrqOwnership};
use crate::perirq::{self, Bank, Class, Fix};
use crate::regs::GicRegisters;
pub use crate::v2::Accessor;

/// `GICD_CTLR`.
pub const GICD_CTLR: usize = 0x0000;
/// `GICD_TYPER`.
pub const GICD_TYPER: usize = 0x0004;
/// `GICD_IIDR`.
pub const GICD_IIDR: usize = 0x0008;
/// `GICD_SETSPI_NSR`.
pub const GICD_SETSPI_NSR: usize = 0x0040;
/// `GICD_CLRSPI_NSR`.
pub const GICD_CLRSPI_NSR: usize = 0x0048;
/// `GICD_IGROUPR<n>`.
pub const GICD_IGROUPR: usize = 0x0080;
/// `GICD_ISENABLER<n>`.
pub const GICD_ISENABLER: usize = 0x0100;
/// `GICD_ICENABLER<n>`.
pub const GICD_ICENABLER: usize = 0x0180;
/// `GICD_ISPENDR<n>`.
pub const GICD_ISPENDR: usize = 0x0200;
/// `GICD_ICPENDR<n>`.
pub const GICD_ICPENDR: usize = 0x0280;
/// `GICD_ISACTIVER<n>`.
pub const GICD_ISACTIVER: usize = 0x0300;
/// `GICD_ICACTIVER<n>`.
pub const GICD_ICACTIVER: usize = 0x0380;
/// `GICD_IPRIORITYR<n>`.
pub const GICD_IPRIORITYR: usize = 0x0400;
/// `GICD_ICFGR<n>`.
pub const GICD_ICFGR: usize = 0x0C00;
/// `GICD_IGRPMODR<n>`.
pub const GICD_IGRPMODR: usize = 0x0D00;
/// `GICD_IROUTER<n>`: 64 bits per INTID at `0x6000 + 8 * n`, n = 32..1020.
pub const GICD_IROUTER: usize = 0x6000;

/// `GICD_CTLR` bits of the Non-secure view: EnableGrp1 `[0]`, EnableGrp1A `[1]`, ARE_NS `[4]`.
const CTLR_NS_ENABLE_BITS: u32 = 0b1_0011;
/// `GICD_TYPER` bits hidden from cells: ESPI `[8]`, MBIS `[16]`, LPIS `[17]`, DVIS `[18]`,
/// ESPI_range `[31:27]`. Cells get neither LPIs (no ITS partitioning here) nor extended SPIs.
const TYPER_HIDDEN: u32 = 1 << 8 | 1 << 16 | 1 << 17 | 1 << 18 | 0x1f << 27;
/// `GICD_TYPER.No1N` `[25]`: 1 of N routing not supported, so kernels do not ask for it.
const TYPER_NO1N: u32 = 1 << 25;
/// `GICD_IROUTER<n>.Interrupt_Routing_Mode`.
const IROUTER_IRM: u64 = 1 << 31;
/// The implemented fields of `GICD_IROUTER<n>`: Aff3 `[39:32]`, IRM `[31]`, Aff2..Aff0.
const IROUTER_VALID: u64 = 0xff_80ff_ffff;

/// Emulation of the GICv3 distributor for cells; the same policy as
/// [`DistributorV2`](crate::v2::DistributorV2) (read that first), with these differences:
///
/// - Affinity routing: the per-interrupt registers for INTIDs 0..32, `GICD_ITARGETSR<n>`,
///   `GICD_SGIR`, `GICD_[C|S]PENDSGIR<n>` and `GICD_NSACR<n>` read 0 and ignore writes (their
///   content lives in the redistributors, IHI 0069 §12.9).
/// - `GICD_IROUTER<n>` (64-bit or 32-bit halves): a cell routes its SPIs to its own CPUs only.
///   `Interrupt_Routing_Mode` = 1 (any participating PE) and affinities outside the cell are
///   dropped (the route stays as it was) or, with [`ForeignWrites::Report`], reported.
///   A 32-bit half is checked together with the other half as it is in the register.
/// - `GICD_SETSPI_NSR`/`GICD_CLRSPI_NSR`: only for the cell's SPIs.
/// - `GICD_TYPER` hides LPIs, message-based SPIs, extended SPIs and DVIS, and sets `No1N`.
/// - `GICD_CTLR`: the root cell can set EnableGrp1, EnableGrp1A and ARE_NS, never clear them.
/// - Extended SPI ranges, `GICD_INMIR<n>` and the Secure-only registers: reserved or RAZ/WI.
///
/// Same locking rule: call with the distributor lock held.
#[derive(Clone, Copy, Debug)]
pub struct DistributorV3 {
    root: CellId,
    typer: u32,
    iidr: u32,
    policy: ForeignWrites,
}

impl DistributorV3 {
    /// Size of the distributor frame.
    pub const SIZE: usize = 0x10000;

    /// An emulator presenting `typer` (made safe as described) and `iidr`.
    pub const fn new(root: CellId, typer: u32, iidr: u32, policy: ForeignWrites) -> Self {
        Self {
            root,
            typer: typer & !TYPER_HIDDEN | TYPER_NO1N,
            iidr,
            policy,
        }
    }

    /// An emulator presenting the physical distributor's `GICD_TYPER` and `GICD_IIDR`.
    pub fn probe<R: GicRegisters + ?Sized>(
        regs: &mut R,
        root: CellId,
        policy: ForeignWrites,
    ) -> Self {
        let typer = regs.read32(GICD_TYPER);
        let iidr = regs.read32(GICD_IIDR);
        Self::new(root, typer, iidr, policy)
    }

    /// The number of INTIDs below 1020 the distributor implements,
    /// `32 * (GICD_TYPER.ITLinesNumber + 1)`.
    pub const fn implemented_irqs(&self) -> u32 {
        perirq::implemented_irqs(self.typer)
    }

    /// Emulates one trapped access by `by`; `topology` maps routing affinities to CPUs.
    pub fn access<R: GicRegisters + ?Sized>(
        &self,
        regs: &mut R,
        ownership: &IrqOwnership,
        by: Accessor,
        topology: &Topology<'_>,
        access: MmioAccess,
    ) -> Result<Outcome, Violation> {
        self.dispatch(regs, ownership, by, topology, &access)
            .map_err(|reason| Violation {
                cell: by.cell,
                block: Block::Distributor,
                access,
                reason,
            })
    }

    fn dispatch<R: GicRegisters + ?Sized>(
        &self,
        regs: &mut R,
        ownership: &IrqOwnership,
        by: Accessor,
        topology: &Topology<'_>,
        access: &MmioAccess,
    ) -> Result<Outcome, Reason> {
        let offset = access.offset;
        let policy = self.policy;
        // Per-interrupt banks; the registers of INTIDs 0..32 are RAZ/WI with affinity routing.
        let bank_with = |regs: &mut R, base, bits, class, fix: Fix| {
            let bank = Bank::locate(offset, base, 0, bits, class);
            if bank.first_irq < IntId::SPI_START {
                return perirq::raz_wi(access, bank.bytes);
            }
            perirq::emulate(regs, bank, access, ownership, by.cell, policy, fix)
        };
        let bank =
            |regs: &mut R, base, bits, class| bank_with(regs, base, bits, class, perirq::keep);
        match offset {
            GICD_CTLR => {
                perirq::check_width(access, false)?;
                match access.kind {
                    AccessKind::Read => Ok(Outcome::Read(u64::from(regs.read32(GICD_CTLR)))),
                    AccessKind::Write(value) => {
                        if by.cell == self.root {
                            let current = regs.read32(GICD_CTLR);
                            let new = current | (value as u32 & CTLR_NS_ENABLE_BITS);
                            if new != current {
                                regs.write32(GICD_CTLR, new);
                            }
                        }
                        Ok(Outcome::Written)
                    }
                }
            }
            GICD_TYPER => perirq::read_only(access, || self.typer),
            GICD_IIDR => perirq::read_only(access, || self.iidr),
            // GICD_TYPER2, GICD_STATUSR, the Secure GICD_SETSPI_SR/GICD_CLRSPI_SR.
            0x000C | 0x0010 | 0x0050 | 0x0058 => perirq::raz_wi(access, false),
            GICD_SETSPI_NSR | GICD_CLRSPI_NSR => {
                perirq::check_width(access, false)?;
                let AccessKind::Write(value) = access.kind else {
                    return Ok(Outcome::Read(0));
                };
                // INTID in bits [12:0] (IHI 0069, GICD_SETSPI_NSR).
                let irq = IntId::new(value as u32 & 0x1fff);
                if irq.is_spi() && ownership.owns(by.cell, irq) {
                    regs.write32(offset, irq.get());
                } else if policy == ForeignWrites::Report {
                    return Err(Reason::ForeignIrq(irq));
                }
                Ok(Outcome::Written)
            }
            // The group of a line is the hypervisor's: reads show it, writes are ignored.
            0x0080..0x0100 => bank_with(regs, GICD_IGROUPR, 1, Class::Value, perirq::fixed),
            0x0100..0x0180 => bank(regs, GICD_ISENABLER, 1, Class::SetClear),
            0x0180..0x0200 => bank(regs, GICD_ICENABLER, 1, Class::SetClear),
            0x0200..0x0280 => bank(regs, GICD_ISPENDR, 1, Class::SetClear),
            0x0280..0x0300 => bank(regs, GICD_ICPENDR, 1, Class::SetClear),
            0x0300..0x0380 => bank(regs, GICD_ISACTIVER, 1, Class::SetClear),
            0x0380..0x0400 => bank(regs, GICD_ICACTIVER, 1, Class::SetClear),
            0x0400..0x07FC => bank_with(
                regs,
                GICD_IPRIORITYR,
                8,
                Class::Value,
                perirq::cell_priority,
            ),
            // GICD_ITARGETSR<n>: RES0 with affinity routing; byte-accessible.
            0x0800..0x0BFC => perirq::raz_wi(access, true),
            0x0C00..0x0D00 => bank(regs, GICD_ICFGR, 2, Class::Value),
            0x0D00..0x0D80 => bank_with(regs, GICD_IGRPMODR, 1, Class::Value, perirq::fixed),
            // GICD_NSACR<n> (Secure only), GICD_SGIR, GICD_[C|S]PENDSGIR<n> (legacy only).
            0x0E00..=0x0F00 => perirq::raz_wi(access, false),
            0x0F10..0x0F30 => perirq::raz_wi(access, true),
            // GICD_INMIR<n>: no NMIs for cells.
            0x0F80..0x1000 => perirq::raz_wi(access, false),
            0x6100..0x7FE0 => self.irouter(regs, ownership, by, topology, access),
            // Peripheral ID registers: GICD_PIDR2.ArchRev tells kernels this is a GICv3.
            0xFFD0..0x10000 => perirq::read_only(access, || regs.read32(offset)),
            _ => Err(Reason::ReservedOffset),
        }
    }

    fn irouter<R: GicRegisters + ?Sized>(
        &self,
        regs: &mut R,
        ownership: &IrqOwnership,
        by: Accessor,
        topology: &Topology<'_>,
        access: &MmioAccess,
    ) -> Result<Outcome, Reason> {
        let offset = access.offset;
        let aligned = offset.is_multiple_of(access.width.bytes());
        if !aligned || !matches!(access.width, Width::Word | Width::Double) {
            return Err(Reason::BadWidth);
        }
        let irq = IntId::new(((offset - GICD_IROUTER) / 8) as u32);
        let register = GICD_IROUTER + 8 * irq.get() as usize;
        let owned = ownership.owns(by.cell, irq);
        let value = match access.kind {
            AccessKind::Read if !owned => return Ok(Outcome::Read(0)),
            AccessKind::Read if access.width == Width::Double => {
                return Ok(Outcome::Read(regs.read64(register)));
            }
            AccessKind::Read => return Ok(Outcome::Read(u64::from(regs.read32(offset)))),
            AccessKind::Write(_) if !owned => {
                return match self.policy {
                    ForeignWrites::Report => Err(Reason::ForeignIrq(irq)),
                    ForeignWrites::Ignore => Ok(Outcome::Written),
                };
            }
            AccessKind::Write(value) => value,
        };
        let current = regs.read64(register);
        let new = match (access.width, offset - register) {
            (Width::Double, _) => value,
            (_, 0) => current & !0xffff_ffff | value,
            _ => current & 0xffff_ffff | value << 32,
        } & IROUTER_VALID;
        let refused = if new & IROUTER_IRM != 0 {
            Some(Reason::UnsafeRouting)
        } else {
            match topology.cpu_of(Mpidr::from_register(new)) {
                None => Some(Reason::UnsafeRouting),
                Some(cpu) if !by.cpus.contains(cpu) => Some(Reason::ForeignCpu(cpu)),
                Some(_) => None,
            }
        };
        match (refused, self.policy) {
            (Some(reason), ForeignWrites::Report) => Err(reason),
            (Some(_), ForeignWrites::Ignore) => Ok(Outcome::Written),
            (None, _) if access.width == Width::Double => {
                regs.write64(register, new);
                Ok(Outcome::Written)
            }
            (None, _) => {
                let half = (new >> (8 * (offset - register))) as u32;
                regs.write32(offset, half);
                Ok(Outcome::Written)
            }
        }
    }
}

/// `GICR_*` RD_base registers (IHI 0069 §12.10).
pub mod gicr {
    /// `GICR_CTLR`.
    pub const CTLR: usize = 0x0000;
    /// `GICR_IIDR`.
    pub const IIDR: usize = 0x0004;
    /// `GICR_TYPER` (64 bits).
    pub const TYPER: usize = 0x0008;
    /// `GICR_STATUSR`.
    pub const STATUSR: usize = 0x0010;
    /// `GICR_WAKER`.
    pub const WAKER: usize = 0x0014;
    /// Offset of the SGI_base frame from RD_base.
    pub const SGI_BASE: usize = 0x1_0000;
    /// `GICR_IGROUPR0` in SGI_base.
    pub const IGROUPR0: usize = 0x0080;
    /// `GICR_ISENABLER0` in SGI_base.
    pub const ISENABLER0: usize = 0x0100;
    /// `GICR_IPRIORITYR<n>` in SGI_base.
    pub const IPRIORITYR: usize = 0x0400;
    /// `GICR_ICFGR0` in SGI_base.
    pub const ICFGR0: usize = 0x0C00;
    /// `GICR_IGRPMODR0` in SGI_base.
    pub const IGRPMODR0: usize = 0x0D00;
}

/// `GICR_TYPER[31:0]` bits shown to cells: Last `[4]` and Processor_Number `[23:8]`. Hidden:
/// PLPIS, VLPIS, Dirty, DirectLPI, DPGS, MPAM, RVPEID, CommonLPIAff, VSGI, PPInum (no LPIs, no
/// extended PPIs). The affinity in `[63:32]` is shown as is.
const GICR_TYPER_SHOWN: u32 = 0x00ff_ff10;
/// `GICR_WAKER.ProcessorSleep`.
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;

/// The access policy for the GICv3 redistributor region: one redistributor per CPU, in
/// [`Topology`] order, `stride` bytes apart (RD_base, then SGI_base 64 KiB later).
///
/// | frame | own CPUs | other CPUs |
/// |---|---|---|
/// | RD_base `GICR_TYPER`, `GICR_IIDR`, ID registers | read | read (kernels scan every frame's `GICR_TYPER` for their own affinity and `Last`) |
/// | RD_base `GICR_CTLR` | read, writes ignored (no LPIs) | violation |
/// | RD_base `GICR_WAKER` | read, `ProcessorSleep` writable | violation |
/// | RD_base LPI and MPAM registers, `GICR_STATUSR` | reads 0, writes ignored | violation |
/// | SGI_base `IGROUPR0`, `IS/ICENABLER0`, `IS/ICPENDR0`, `IS/ICACTIVER0`, `IPRIORITYR0..7`, `ICFGR0/1`, `IGRPMODR0` | as the distributor, minus the SGIs/PPIs the hypervisor reserved | violation |
/// | SGI_base `NSACR`, `INMIR0` | reads 0, writes ignored | violation |
///
/// Everything else (extended PPI registers, GICv4 VLPI frames, reserved offsets) is a
/// violation. Call with the distributor lock held (same read-merge-write rule).
#[derive(Clone, Copy, Debug)]
pub struct Redistributors {
    stride: usize,
    policy: ForeignWrites,
}

impl Redistributors {
    /// Distance between redistributors on GICv3: RD_base + SGI_base.
    pub const GICV3_STRIDE: usize = 0x2_0000;
    /// Distance between redistributors on GICv4: plus VLPI_base and a reserved frame.
    pub const GICV4_STRIDE: usize = 0x4_0000;

    /// The policy for a region of redistributors `stride` bytes apart.
    pub const fn new(stride: usize, policy: ForeignWrites) -> Self {
        Self { stride, policy }
    }

    /// Emulates one trapped access by `by` at `access.offset` from the start of the
    /// redistributor region (`regs` is the whole region).
    pub fn access<R: GicRegisters + ?Sized>(
        &self,
        regs: &mut R,
        ownership: &IrqOwnership,
        by: Accessor,
        topology: &Topology<'_>,
        access: MmioAccess,
    ) -> Result<Outcome, Violation> {
        self.dispatch(regs, ownership, by, topology, &access)
            .map_err(|reason| Violation {
                cell: by.cell,
                block: Block::Redistributors,
                access,
                reason,
            })
    }

    fn dispatch<R: GicRegisters + ?Sized>(
        &self,
        regs: &mut R,
        ownership: &IrqOwnership,
        by: Accessor,
        topology: &Topology<'_>,
        access: &MmioAccess,
    ) -> Result<Outcome, Reason> {
        let offset = access.offset;
        // A zero stride (a misconfigured region) makes every offset reserved, not a panic.
        let Some(cpu) = offset
            .checked_div(self.stride)
            .filter(|&cpu| cpu < topology.len())
        else {
            return Err(Reason::ReservedOffset);
        };
        let frame = cpu * self.stride;
        let local = offset - frame;
        let own = by.cpus.contains(cpu);
        match local {
            gicr::IIDR => perirq::read_only(access, || regs.read32(offset)),
            0x0008..0x0010 => {
                let aligned = offset.is_multiple_of(access.width.bytes());
                let typer = |regs: &mut R| {
                    let low = regs.read32(frame + gicr::TYPER) & GICR_TYPER_SHOWN;
                    u64::from(regs.read32(frame + gicr::TYPER + 4)) << 32 | u64::from(low)
                };
                match (access.width, access.kind) {
                    _ if !aligned => Err(Reason::BadWidth),
                    (Width::Double, AccessKind::Read) => Ok(Outcome::Read(typer(regs))),
                    (Width::Word, AccessKind::Read) => Ok(Outcome::Read(
                        typer(regs) >> (8 * (local - 8)) & 0xffff_ffff,
                    )),
                    (Width::Word | Width::Double, AccessKind::Write(_)) => Ok(Outcome::Written),
                    _ => Err(Reason::BadWidth),
                }
            }
            0xFFD0..0x10000 => perirq::read_only(access, || regs.read32(offset)),
            _ if !own => Err(Reason::ForeignCpu(cpu)),
            gicr::CTLR => perirq::read_only(access, || regs.read32(offset)),
            gicr::WAKER => {
                perirq::check_width(access, false)?;
                let current = regs.read32(offset);
                match access.kind {
                    AccessKind::Read => Ok(Outcome::Read(u64::from(current))),
                    AccessKind::Write(value) => {
                        let new =
                            current & !WAKER_PROCESSOR_SLEEP | value as u32 & WAKER_PROCESSOR_SLEEP;
                        if new != current {
                            regs.write32(offset, new);
                        }
                        Ok(Outcome::Written)
                    }
                }
            }
            // GICR_STATUSR, GICR_MPAMIDR, GICR_PARTIDR.
            0x0010 | 0x0018 | 0x001C => perirq::raz_wi(access, false),
            // LPI registers (SETLPIR, CLRLPIR, PROPBASER, PENDBASER, INVLPIR, INVALLR, SYNCR),
            // 64-bit: GICR_TYPER.PLPIS reads 0, so nothing is there for the cell.
            0x0040 | 0x0048 | 0x0070 | 0x0078 | 0x00A0 | 0x00B0 | 0x00C0 => raz_wi_64(access),
            0x0044 | 0x004C | 0x0074 | 0x007C | 0x00A4 | 0x00B4 | 0x00C4 => {
                perirq::raz_wi(access, false)
            }
            sgi if (gicr::SGI_BASE..2 * gicr::SGI_BASE).contains(&sgi) => {
                let base = frame + gicr::SGI_BASE;
                let policy = self.policy;
                let mut bank = |base_off: usize, bits, class, fix: Fix| {
                    let bank = Bank::locate(offset, base + base_off, 0, bits, class);
                    perirq::emulate(regs, bank, access, ownership, by.cell, policy, fix)
                };
                let keep = perirq::keep;
                match sgi - gicr::SGI_BASE {
                    0x0080..0x0084 => bank(0x0080, 1, Class::Value, perirq::fixed),
                    0x0100..0x0104 => bank(0x0100, 1, Class::SetClear, keep),
                    0x0180..0x0184 => bank(0x0180, 1, Class::SetClear, keep),
                    0x0200..0x0204 => bank(0x0200, 1, Class::SetClear, keep),
                    0x0280..0x0284 => bank(0x0280, 1, Class::SetClear, keep),
                    0x0300..0x0304 => bank(0x0300, 1, Class::SetClear, keep),
                    0x0380..0x0384 => bank(0x0380, 1, Class::SetClear, keep),
                    0x0400..0x0420 => bank(0x0400, 8, Class::Value, perirq::cell_priority),
                    0x0C00..0x0C08 => bank(0x0C00, 2, Class::Value, keep),
                    0x0D00..0x0D04 => bank(0x0D00, 1, Class::Value, perirq::fixed),
                    0x0E00 | 0x0F80 => perirq::raz_wi(access, false),
                    _ => Err(Reason::ReservedOffset),
                }
            }
            _ => Err(Reason::ReservedOffset),
        }
    }
}

fn raz_wi_64(access: &MmioAccess) -> Result<Outcome, Reason> {
    match access.width {
        Width::Double if access.offset.is_multiple_of(8) => Ok(match access.kind {
            AccessKind::Read => Outcome::Read(0),
            AccessKind::Write(_) => Outcome::Written,
        }),
        _ => perirq::raz_wi(access, false),
    }
}

/// `ICC_SGI1R_EL1` fields (IHI 0069, ICC_SGI1R_EL1): TargetList `[15:0]`, Aff1 `[23:16]`,
/// INTID `[27:24]`, Aff2 `[39:32]`, IRM `[40]`, RS `[47:44]`, Aff3 `[55:48]`.
mod sgi1r {
    pub const AFF1_SHIFT: u32 = 16;
    pub const INTID_SHIFT: u32 = 24;
    pub const AFF2_SHIFT: u32 = 32;
    pub const IRM: u64 = 1 << 40;
    pub const RS_SHIFT: u32 = 44;
    pub const AFF3_SHIFT: u32 = 48;
}

/// An SGI a cell may send: what is left of its `ICC_SGI1R_EL1` write after filtering.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SgiRequest {
    /// The SGI.
    pub intid: IntId,
    /// The CPUs to signal, all in the cell (possibly none).
    pub targets: CpuSet,
}

impl SgiRequest {
    /// The `ICC_SGI1R_EL1` values the hypervisor writes to send the SGI, one per target CPU
    /// (`IRM` = 0, `RS` and `TargetList` selecting the CPU's Aff0).
    pub fn physical_writes<'a>(
        &self,
        topology: &'a Topology<'_>,
    ) -> impl Iterator<Item = u64> + 'a {
        let intid = u64::from(self.intid.get() & 0xf);
        self.targets
            .iter()
            .filter_map(|cpu| topology.mpidr_of(cpu))
            .map(move |mpidr| encode_sgi1r(intid, mpidr))
    }
}

fn encode_sgi1r(intid: u64, mpidr: Mpidr) -> u64 {
    let aff0 = mpidr.aff0();
    u64::from(mpidr.aff3()) << sgi1r::AFF3_SHIFT
        | u64::from(aff0 / 16) << sgi1r::RS_SHIFT
        | u64::from(mpidr.aff2()) << sgi1r::AFF2_SHIFT
        | intid << sgi1r::INTID_SHIFT
        | u64::from(mpidr.aff1()) << sgi1r::AFF1_SHIFT
        | 1 << (aff0 % 16)
}

/// Filters a trapped `ICC_SGI1R_EL1` write by `by`.
///
/// - `IRM` = 1 ("all PEs except self") becomes the cell's CPUs except the sender.
/// - `IRM` = 0: CPUs `Aff3.Aff2.Aff1.(RS * 16 + n)` for each bit n of `TargetList`; affinities
///   that are no CPU are skipped (the GIC ignores them too); CPUs outside the cell are dropped,
///   or reported with [`ForeignWrites::Report`].
/// - An SGI the hypervisor reserved is dropped (empty `targets`) or reported.
pub fn filter_sgi1r(
    value: u64,
    ownership: &IrqOwnership,
    by: Accessor,
    topology: &Topology<'_>,
    policy: ForeignWrites,
) -> Result<SgiRequest, Violation> {
    let violation = |reason| Violation {
        cell: by.cell,
        block: Block::IccSgi1r,
        access: MmioAccess::write(0, Width::Double, value),
        reason,
    };
    let intid = IntId::new((value >> sgi1r::INTID_SHIFT & 0xf) as u32);
    let mut targets = CpuSet::empty();
    if value & sgi1r::IRM != 0 {
        targets = by.cpus.difference(CpuSet::single(by.cpu));
    } else {
        let field = |shift: u32| (value >> shift) as u8;
        let rs = (value >> sgi1r::RS_SHIFT & 0xf) as u8;
        // The set bits of the target list only.
        let mut list = value as u16;
        while list != 0 {
            let n = list.trailing_zeros() as u8;
            list &= list - 1;
            let mpidr = Mpidr::new(
                field(sgi1r::AFF3_SHIFT),
                field(sgi1r::AFF2_SHIFT),
                field(sgi1r::AFF1_SHIFT),
                rs * 16 + n,
            );
            let Some(cpu) = topology.cpu_of(mpidr) else {
                continue;
            };
            if by.cpus.contains(cpu) {
                targets.insert(cpu);
            } else if policy == ForeignWrites::Report {
                return Err(violation(Reason::ForeignCpu(cpu)));
            }
        }
    }
    if !ownership.owns(by.cell, intid) {
        if policy == ForeignWrites::Report {
            return Err(violation(Reason::ForeignIrq(intid)));
        }
        targets = CpuSet::empty();
    }
    Ok(SgiRequest { intid, targets })
}
