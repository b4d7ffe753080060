//! The per-interrupt register banks shared by the GICv2 distributor, the GICv3 distributor
//! and the GICv3 SGI_base frame: one field of 1, 2 or 8 bits per INTID, packed into 32-bit
//! registers (IHI 0048B §4.3, IHI 0069 §12.9, §12.11).

use crate::access::{AccessKind, ForeignWrites, MmioAccess, Outcome, Reason, Width};
use crate::cpu::CellId;
use crate::ownership::{IntId, IrqOwnership};
use crate::regs::GicRegisters;
use crate::HIGHEST_CELL_PRIORITY;

/// How writes of a bank behave.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Class {
    /// `GICD_IS*`/`GICD_IC*`, `GICD_[S|C]PENDSGIR`: writing 1 acts, writing 0 does nothing,
    /// so writing only the cell's bits needs no read and no lock against other cells.
    SetClear,
    /// `GICD_IGROUPR`, `GICD_IPRIORITYR`, `GICD_ITARGETSR`, `GICD_ICFGR`, `GICD_IGRPMODR`:
    /// the register holds the value, so a partial write is a read-modify-write of the word.
    Value,
}

/// One register of a bank, located for an access.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bank {
    /// Physical offset of the 32-bit register that holds the accessed field(s).
    pub word: usize,
    /// INTID of the field in bits `[bits-1:0]` of that register.
    pub first_irq: u32,
    /// Bits per INTID: 1, 2 or 8.
    pub bits: u32,
    /// Write behaviour.
    pub class: Class,
    /// Whether byte accesses are architecturally allowed (IHI 0048B §4.1.4: only
    /// `GICD_IPRIORITYR`, `GICD_ITARGETSR`, `GICD_CPENDSGIR`, `GICD_SPENDSGIR`; IHI 0069
    /// §12.1.3 likewise, plus `GICR_IPRIORITYR`).
    pub bytes: bool,
}

impl Bank {
    /// The bank register holding `offset`, in a bank of `bits`-bit fields starting at `base`
    /// with INTID `base_irq`.
    pub fn locate(offset: usize, base: usize, base_irq: u32, bits: u32, class: Class) -> Self {
        let word = offset & !3;
        Self {
            word,
            first_irq: base_irq + ((word - base) * 8) as u32 / bits,
            bits,
            class,
            bytes: bits == 8,
        }
    }

    /// The bits of the register that belong to interrupts `cell` owns.
    pub fn owned_mask(&self, ownership: &IrqOwnership, cell: CellId) -> u32 {
        let field = field_mask(self.bits);
        (0..32 / self.bits)
            .filter(|&i| ownership.owns(cell, IntId::new(self.first_irq + i)))
            .fold(0, |mask, i| mask | field << (i * self.bits))
    }

    fn first_irq_in(&self, mask: u32) -> IntId {
        IntId::new(self.first_irq + mask.trailing_zeros() / self.bits)
    }
}

/// What a `Value` write stores in one owned field: from the INTID, the written and the current
/// value, the value to store or a reason to refuse the write.
pub(crate) type Fix = fn(IntId, u32, u32) -> Result<u32, Reason>;

/// A value write that stores what was written.
pub(crate) fn keep(_: IntId, new: u32, _: u32) -> Result<u32, Reason> {
    Ok(new)
}

/// A priority write: anything above [`HIGHEST_CELL_PRIORITY`] (numerically below) is stored as
/// it, so the priorities above stay the hypervisor's.
pub(crate) fn cell_priority(_: IntId, new: u32, _: u32) -> Result<u32, Reason> {
    Ok(new.max(u32::from(HIGHEST_CELL_PRIORITY)))
}

/// A write of a field the cell may read but never change: `GICD_IGROUPR`, `GICR_IGROUPR0` and
/// `GICD_IGRPMODR`/`GICR_IGRPMODR0`. The hypervisor chose each line's group (all Group 1 on
/// GICv3, as a Non-secure GIC user sees it: RAO/WI); a cell that changed it could make its
/// interrupts vanish (a disabled group) or reach EL2 as FIQs.
pub(crate) fn fixed(_: IntId, _: u32, current: u32) -> Result<u32, Reason> {
    Ok(current)
}

/// All ones in the low `bits` bits (`bits` < 32).
pub(crate) const fn field_mask(bits: u32) -> u32 {
    (1 << bits) - 1
}

/// Checks width and alignment for a register allowing words and, if `bytes`, bytes.
/// The number of INTIDs below 1020 a distributor implements, `32 * (ITLinesNumber + 1)`
/// from `GICD_TYPER[4:0]` (IHI 0048B §4.3.2, IHI 0069 §12.9.38; same field on both).
pub(crate) const fn implemented_irqs(typer: u32) -> u32 {
    let lines = 32 * ((typer & 0x1f) + 1);
    if lines > IntId::SPI_END {
        IntId::SPI_END
    } else {
        lines
    }
}

pub(crate) fn check_width(access: &MmioAccess, bytes: bool) -> Result<(), Reason> {
    let ok = match access.width {
        Width::Word => true,
        Width::Byte => bytes,
        Width::Half | Width::Double => false,
    };
    if ok && access.offset.is_multiple_of(access.width.bytes()) {
        Ok(())
    } else {
        Err(Reason::BadWidth)
    }
}

/// Emulates an access to a per-interrupt bank register: reads show only the cell's fields,
/// writes change only the cell's fields. `fix` sees each owned field of a `Value` write
/// (INTID, new value, current value) and returns what to store or a reason to refuse.
///
/// The caller holds the distributor lock: `Value` writes read, merge and write back the word.
pub(crate) fn emulate<R: GicRegisters + ?Sized>(
    regs: &mut R,
    bank: Bank,
    access: &MmioAccess,
    ownership: &IrqOwnership,
    cell: CellId,
    policy: ForeignWrites,
    mut fix: impl FnMut(IntId, u32, u32) -> Result<u32, Reason>,
) -> Result<Outcome, Reason> {
    check_width(access, bank.bytes)?;
    let shift = (access.offset & 3) as u32 * 8;
    let lane = (access.width.mask() as u32) << shift;
    let owned = bank.owned_mask(ownership, cell);
    let value = match access.kind {
        AccessKind::Read => {
            let physical = regs.read32(bank.word);
            return Ok(Outcome::Read(u64::from((physical & owned & lane) >> shift)));
        }
        AccessKind::Write(value) => ((value as u32) << shift) & lane,
    };
    match bank.class {
        Class::SetClear => {
            let foreign = value & !owned;
            if foreign != 0 && policy == ForeignWrites::Report {
                return Err(Reason::ForeignIrq(bank.first_irq_in(foreign)));
            }
            if value & owned != 0 {
                regs.write32(bank.word, value & owned);
            }
        }
        Class::Value => {
            let current = regs.read32(bank.word);
            // Foreign fields read as zero: writing back what was read (zero) changes nothing
            // and is no violation; a non-zero value in a foreign field is.
            let foreign = value & lane & !owned;
            if foreign != 0 && policy == ForeignWrites::Report {
                return Err(Reason::ForeignIrq(bank.first_irq_in(foreign)));
            }
            let field = field_mask(bank.bits);
            let mut result = current;
            for i in 0..32 / bank.bits {
                let at = i * bank.bits;
                if (owned & lane) >> at & field == 0 {
                    continue;
                }
                let irq = IntId::new(bank.first_irq + i);
                let stored = fix(irq, value >> at & field, current >> at & field)? & field;
                result = result & !(field << at) | stored << at;
            }
            if result != current {
                regs.write32(bank.word, result);
            }
        }
    }
    Ok(Outcome::Written)
}

/// A register that reads as zero and ignores writes (words or, if `bytes`, bytes).
pub(crate) fn raz_wi(access: &MmioAccess, bytes: bool) -> Result<Outcome, Reason> {
    check_width(access, bytes)?;
    Ok(match access.kind {
        AccessKind::Read => Outcome::Read(0),
        AccessKind::Write(_) => Outcome::Written,
    })
}

/// A read-only word register whose reads come from `read`; writes are ignored.
pub(crate) fn read_only(
    access: &MmioAccess,
    read: impl FnOnce() -> u32,
) -> Result<Outcome, Reason> {
    check_width(access, false)?;
    Ok(match access.kind {
        AccessKind::Read => Outcome::Read(u64::from(read())),
        AccessKind::Write(_) => Outcome::Written,
    })
}
