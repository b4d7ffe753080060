//! GICv2 distributor emulation ([`DistributorV2`]) and `GICD_SGIR` filtering.
//!
//! Register map: IHI 0048B §4.1.2, Table 4-1. The distributor frame is 4 KiB.

use crate::access::{AccessKind, Block, ForeignWrites, MmioAccess, Outcome, Reason, Violation};
use crate::cpu::{CellId, CpuSet};
use crate::ownership::{IntId, IrqOwnership};
use crate::perirq::{self, Bank, Class};
use crate::regs::GicRegisters;

/// `GICD_CTLR`, IHI 0048B §4.3.1.
pub const GICD_CTLR: usize = 0x000;
/// `GICD_TYPER`, §4.3.2.
pub const GICD_TYPER: usize = 0x004;
/// `GICD_IIDR`, §4.3.3.
pub const GICD_IIDR: usize = 0x008;
/// `GICD_IGROUPR<n>`, §4.3.4.
pub const GICD_IGROUPR: usize = 0x080;
/// `GICD_ISENABLER<n>`, §4.3.5.
pub const GICD_ISENABLER: usize = 0x100;
/// `GICD_ICENABLER<n>`, §4.3.6.
pub const GICD_ICENABLER: usize = 0x180;
/// `GICD_ISPENDR<n>`, §4.3.7.
pub const GICD_ISPENDR: usize = 0x200;
/// `GICD_ICPENDR<n>`, §4.3.8.
pub const GICD_ICPENDR: usize = 0x280;
/// `GICD_ISACTIVER<n>`, §4.3.9.
pub const GICD_ISACTIVER: usize = 0x300;
/// `GICD_ICACTIVER<n>`, §4.3.10.
pub const GICD_ICACTIVER: usize = 0x380;
/// `GICD_IPRIORITYR<n>`, §4.3.11.
pub const GICD_IPRIORITYR: usize = 0x400;
/// `GICD_ITARGETSR<n>`, §4.3.12.
pub const GICD_ITARGETSR: usize = 0x800;
/// `GICD_ICFGR<n>`, §4.3.13.
pub const GICD_ICFGR: usize = 0xC00;
/// `GICD_SGIR`, §4.3.15.
pub const GICD_SGIR: usize = 0xF00;
/// `GICD_CPENDSGIR<n>`, §4.3.16.
pub const GICD_CPENDSGIR: usize = 0xF10;
/// `GICD_SPENDSGIR<n>`, §4.3.17.
pub const GICD_SPENDSGIR: usize = 0xF20;

/// `GICD_CTLR` bits a non-secure access sees (Enable for the non-secure group), or with
/// security extensions absent EnableGrp0/EnableGrp1 (§4.3.1).
const CTLR_ENABLE_BITS: u32 = 0b11;
/// `GICD_TYPER.LSPI`, bits `[15:11]`: lockable SPIs are a Secure-world matter.
const TYPER_LSPI: u32 = 0x1f << 11;

/// The CPU (and its cell) that made a trapped access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Accessor {
    /// The cell.
    pub cell: CellId,
    /// The cell's CPUs.
    pub cpus: CpuSet,
    /// The CPU that made the access (a member of `cpus`).
    pub cpu: usize,
}

/// Emulation of the GICv2 distributor for cells, with the partitioning policy below.
///
/// Stage 2 leaves the distributor unmapped for every cell; the hypervisor decodes each data
/// abort into a [`MmioAccess`] and calls [`access`](Self::access), which performs the allowed
/// part on the physical distributor and returns the value to load, or a [`Violation`].
///
/// # Policy
///
/// | registers | a cell can | foreign interrupts |
/// |---|---|---|
/// | `ISENABLER`, `ICENABLER`, `ISPENDR`, `ICPENDR`, `ISACTIVER`, `ICACTIVER` (words) | set/clear its interrupts | read 0, writes dropped |
/// | `IGROUPR` (words) | read its fields; writes ignored (the group is the hypervisor's) | read 0, writes dropped |
/// | `ICFGR` (words) | change its fields | read 0, writes dropped |
/// | `IPRIORITYR` (words, bytes) | change its fields, at most up to [`HIGHEST_CELL_PRIORITY`](crate::HIGHEST_CELL_PRIORITY) | read 0, writes dropped |
/// | `ITARGETSR` (words, bytes) | target its interrupts at its own CPUs only | read 0, writes dropped |
/// | `CPENDSGIR`, `SPENDSGIR` (words, bytes) | change SGI state on its CPU | hypervisor SGIs read 0 |
/// | `SGIR` | send SGIs to its own CPUs (filters 00, 01, 10 become an explicit list) | targets dropped |
/// | `CTLR` | read; the root cell can set enable bits, never clear them | — |
/// | `TYPER`, `IIDR` | read the values given at construction (`TYPER.LSPI` = 0) | — |
/// | `0xD00..0xF00` (implementation defined, `NSACR`) | reads 0, writes ignored | — |
/// | ID registers `0xFD0..0x1000` | read | — |
///
/// "Its interrupts" are the SPIs [`IrqOwnership`] gives the cell and the SGIs/PPIs of the
/// accessing CPU that the hypervisor did not reserve. Foreign interrupts look unimplemented
/// (RAZ/WI), as stock kernels expect; with [`ForeignWrites::Report`] a write of a non-zero
/// value for one, a target at a foreign CPU or a signal to one is a [`Violation`] instead.
///
/// Always a [`Violation`]: reserved offsets, halfword or doubleword accesses, byte accesses to
/// word-only registers, misaligned accesses, `SGIR.TargetListFilter` = `0b11`.
///
/// # Locking
///
/// Call [`access`](Self::access) with the lock that serialises every access to the physical
/// distributor held (in practice: the `&mut` to the [`GicRegisters`] comes out of that lock's
/// guard, and the hypervisor's own distributor accesses go through the same lock).
/// `IPRIORITYR`, `ITARGETSR`, `IGROUPR` and `ICFGR` writes are emulated as
/// read-merge-write of the whole word, which would lose another CPU's concurrent update of a
/// neighbouring field, possibly another cell's. The set/clear registers and `SGIR` are single
/// writes and would be safe without the lock.
#[derive(Clone, Copy, Debug)]
pub struct DistributorV2 {
    root: CellId,
    typer: u32,
    iidr: u32,
    policy: ForeignWrites,
}

impl DistributorV2 {
    /// Size of the distributor frame.
    pub const SIZE: usize = 0x1000;

    /// An emulator presenting `typer` and `iidr` (as read from the physical distributor),
    /// where `root` is the root cell.
    pub const fn new(root: CellId, typer: u32, iidr: u32, policy: ForeignWrites) -> Self {
        Self {
            root,
            typer: typer & !TYPER_LSPI,
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

    /// The number of INTIDs the distributor implements, `32 * (ITLinesNumber + 1)` (§4.3.2),
    /// for [`IrqOwnership::new`].
    pub const fn implemented_irqs(&self) -> u32 {
        perirq::implemented_irqs(self.typer)
    }

    /// Emulates one trapped access by `by` (see the [policy](Self#policy)).
    pub fn access<R: GicRegisters + ?Sized>(
        &self,
        regs: &mut R,
        ownership: &IrqOwnership,
        by: Accessor,
        access: MmioAccess,
    ) -> Result<Outcome, Violation> {
        self.dispatch(regs, ownership, by, &access)
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
        access: &MmioAccess,
    ) -> Result<Outcome, Reason> {
        let offset = access.offset;
        let policy = self.policy;
        let bank = |base, bits, class| Bank::locate(offset, base, 0, bits, class);
        let emulate = |regs: &mut R, bank| {
            perirq::emulate(regs, bank, access, ownership, by.cell, policy, perirq::keep)
        };
        match offset {
            GICD_CTLR => self.ctlr(regs, by.cell, access),
            GICD_TYPER => perirq::read_only(access, || self.typer),
            GICD_IIDR => perirq::read_only(access, || self.iidr),
            0x080..0x100 => {
                let bank = bank(GICD_IGROUPR, 1, Class::Value);
                perirq::emulate(
                    regs,
                    bank,
                    access,
                    ownership,
                    by.cell,
                    policy,
                    perirq::fixed,
                )
            }
            0x100..0x180 => emulate(regs, bank(GICD_ISENABLER, 1, Class::SetClear)),
            0x180..0x200 => emulate(regs, bank(GICD_ICENABLER, 1, Class::SetClear)),
            0x200..0x280 => emulate(regs, bank(GICD_ISPENDR, 1, Class::SetClear)),
            0x280..0x300 => emulate(regs, bank(GICD_ICPENDR, 1, Class::SetClear)),
            0x300..0x380 => emulate(regs, bank(GICD_ISACTIVER, 1, Class::SetClear)),
            0x380..0x400 => emulate(regs, bank(GICD_ICACTIVER, 1, Class::SetClear)),
            0x400..0x7FC => {
                let bank = bank(GICD_IPRIORITYR, 8, Class::Value);
                let fix = perirq::cell_priority;
                perirq::emulate(regs, bank, access, ownership, by.cell, policy, fix)
            }
            0x800..0xBFC => {
                let fix = |irq, new, current| itargets(irq, new, current, by.cpus, policy);
                let bank = bank(GICD_ITARGETSR, 8, Class::Value);
                perirq::emulate(regs, bank, access, ownership, by.cell, policy, fix)
            }
            0xC00..0xD00 => emulate(regs, bank(GICD_ICFGR, 2, Class::Value)),
            // Implementation defined (e.g. GIC-400 PPI/SPI status, which would show foreign
            // interrupts) and GICD_NSACR (RAZ/WI for Non-secure accesses, §4.3.14).
            0xD00..0xF00 => perirq::raz_wi(access, true),
            GICD_SGIR => match access.kind {
                AccessKind::Read => perirq::raz_wi(access, false),
                AccessKind::Write(value) => {
                    perirq::check_width(access, false)?;
                    let sgir = filter_sgir(value as u32, ownership, by, policy)?;
                    if let Some(sgir) = sgir {
                        regs.write32(GICD_SGIR, sgir);
                    }
                    Ok(Outcome::Written)
                }
            },
            // One byte per SGI (bit n: pending from CPU n), banked per CPU, write-1-to-act.
            0xF10..0xF20 => emulate(regs, bank(GICD_CPENDSGIR, 8, Class::SetClear)),
            0xF20..0xF30 => emulate(regs, bank(GICD_SPENDSGIR, 8, Class::SetClear)),
            // Peripheral and component ID registers: identification only (§4.1.2).
            0xFD0..0x1000 => perirq::read_only(access, || regs.read32(offset)),
            _ => Err(Reason::ReservedOffset),
        }
    }

    fn ctlr<R: GicRegisters + ?Sized>(
        &self,
        regs: &mut R,
        cell: CellId,
        access: &MmioAccess,
    ) -> Result<Outcome, Reason> {
        perirq::check_width(access, false)?;
        match access.kind {
            AccessKind::Read => Ok(Outcome::Read(u64::from(regs.read32(GICD_CTLR)))),
            AccessKind::Write(value) => {
                // The root cell may switch the distributor on (stock kernels write 0, program,
                // then write 1), but clearing an enable bit would stop every other cell's
                // interrupts: that part is ignored. Other cells are ignored entirely.
                if cell == self.root {
                    let current = regs.read32(GICD_CTLR);
                    let new = current | (value as u32 & CTLR_ENABLE_BITS);
                    if new != current {
                        regs.write32(GICD_CTLR, new);
                    }
                }
                Ok(Outcome::Written)
            }
        }
    }
}

/// Restricts an `ITARGETSR` byte to the cell's CPUs (§4.3.12: bit n targets CPU interface n).
fn itargets(
    irq: IntId,
    new: u32,
    current: u32,
    cpus: CpuSet,
    policy: ForeignWrites,
) -> Result<u32, Reason> {
    if irq.is_private() {
        // GICD_ITARGETSR0..7 are read-only (§4.3.12).
        return Ok(current);
    }
    let allowed = cpus.bits() as u32 & 0xff;
    let foreign = new & !allowed;
    match policy {
        _ if foreign == 0 => Ok(new),
        ForeignWrites::Report => Err(Reason::ForeignCpu(foreign.trailing_zeros() as usize)),
        // Keep the current targets rather than leave the interrupt targeting nobody.
        ForeignWrites::Ignore if new & allowed == 0 => Ok(current),
        ForeignWrites::Ignore => Ok(new & allowed),
    }
}

/// `GICD_SGIR` fields, IHI 0048B §4.3.15.
mod sgir {
    pub const INTID_MASK: u32 = 0xf;
    pub const NSATT: u32 = 1 << 15;
    pub const TARGET_LIST_SHIFT: u32 = 16;
    pub const FILTER_SHIFT: u32 = 24;
}

/// Filters a cell's `GICD_SGIR` write: returns the value to write to the physical `GICD_SGIR`
/// (always `TargetListFilter` = `0b00` with an explicit list of the cell's CPUs), or `None` if
/// nothing is to be sent.
///
/// - `TargetListFilter` `0b00`: the list, restricted to the cell's CPUs;
/// - `0b01` (all but self): the cell's CPUs except the sender;
/// - `0b10` (self): the sender;
/// - `0b11`: reserved, a violation.
///
/// An SGI the hypervisor reserved is dropped (or reported). Only CPU interfaces 0..8 exist.
pub fn filter_sgir(
    value: u32,
    ownership: &IrqOwnership,
    by: Accessor,
    policy: ForeignWrites,
) -> Result<Option<u32>, Reason> {
    let intid = value & sgir::INTID_MASK;
    let list = (value >> sgir::TARGET_LIST_SHIFT) & 0xff;
    let own = by.cpus.bits() as u32 & 0xff;
    let targets = match (value >> sgir::FILTER_SHIFT) & 0b11 {
        0b00 => {
            let foreign = list & !own;
            if foreign != 0 && policy == ForeignWrites::Report {
                return Err(Reason::ForeignCpu(foreign.trailing_zeros() as usize));
            }
            list & own
        }
        0b01 => own & !CpuSet::single(by.cpu).bits() as u32,
        0b10 => own & CpuSet::single(by.cpu).bits() as u32,
        _ => return Err(Reason::ReservedSgiFilter),
    };
    if !ownership.owns(by.cell, IntId::new(intid)) {
        return match policy {
            ForeignWrites::Report => Err(Reason::ForeignIrq(IntId::new(intid))),
            ForeignWrites::Ignore => Ok(None),
        };
    }
    Ok(
        (targets != 0)
            .then_some(intid | (value & sgir::NSATT) | targets << sgir::TARGET_LIST_SHIFT),
    )
}
