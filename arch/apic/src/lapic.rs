//! The local APIC's registers and what a cell may do with them: [`Register`], [`write`](fn@write),
//! [`read`], [`write_intercepted`].
//!
//! Register offsets from the Intel SDM Vol. 3A Table 11-1 (xAPIC, memory-mapped, 16-byte
//! aligned) and Table 11-6 (x2APIC, MSR `0x800 + offset / 16`). A local APIC belongs to its
//! CPU, so nearly everything in it is the running cell's own: the policy only stands between
//! the cell and what leaves the CPU (the ICR) or enters firmware (SMI).

use core::fmt;

use cellvisor_config::CpuSet;

use crate::icr::{ApicMode, DeliveryMode, Icr};
use crate::ipi::{self, IpiViolation, Route};
use crate::topology::Topology;

/// One local APIC register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Register {
    /// Local APIC ID (0x020).
    Id,
    /// Version (0x030).
    Version,
    /// Task priority (0x080).
    Tpr,
    /// Arbitration priority (0x090, xAPIC only).
    Apr,
    /// Processor priority (0x0a0).
    Ppr,
    /// End of interrupt (0x0b0).
    Eoi,
    /// Remote read (0x0c0, xAPIC only).
    Rrd,
    /// Logical destination (0x0d0).
    Ldr,
    /// Destination format (0x0e0, xAPIC only).
    Dfr,
    /// Spurious interrupt vector (0x0f0).
    Svr,
    /// In-service register `n` of 8 (0x100 + 0x10 n).
    Isr(u8),
    /// Trigger mode register `n` of 8 (0x180 + 0x10 n).
    Tmr(u8),
    /// Interrupt request register `n` of 8 (0x200 + 0x10 n).
    Irr(u8),
    /// Error status (0x280).
    Esr,
    /// LVT corrected machine-check interrupt (0x2f0).
    LvtCmci,
    /// Interrupt command, low half; in x2APIC mode the whole 64-bit ICR (0x300).
    IcrLow,
    /// Interrupt command, high half (0x310, xAPIC only).
    IcrHigh,
    /// LVT timer (0x320).
    LvtTimer,
    /// LVT thermal sensor (0x330).
    LvtThermal,
    /// LVT performance monitoring counters (0x340).
    LvtPerf,
    /// LVT LINT0 (0x350).
    LvtLint0,
    /// LVT LINT1 (0x360).
    LvtLint1,
    /// LVT error (0x370).
    LvtError,
    /// Timer initial count (0x380).
    TimerInitial,
    /// Timer current count (0x390).
    TimerCurrent,
    /// Timer divide configuration (0x3e0).
    TimerDivide,
    /// Self IPI (MSR 0x83f, x2APIC only).
    SelfIpi,
}

impl Register {
    /// The register at xAPIC offset `offset` (anything within its 16 bytes), if there is
    /// one in xAPIC mode.
    pub const fn from_xapic_offset(offset: u32) -> Option<Self> {
        match Self::from_index(offset >> 4) {
            Some(Self::SelfIpi) => None,
            other => other,
        }
    }

    /// The register behind x2APIC MSR `msr`, if there is one in x2APIC mode.
    pub const fn from_x2apic_msr(msr: u32) -> Option<Self> {
        if msr < 0x800 || msr > 0x8ff {
            return None;
        }
        match Self::from_index(msr - 0x800) {
            Some(Self::Apr | Self::Rrd | Self::Dfr | Self::IcrHigh) => None,
            other => other,
        }
    }

    const fn from_index(index: u32) -> Option<Self> {
        Some(match index {
            0x02 => Self::Id,
            0x03 => Self::Version,
            0x08 => Self::Tpr,
            0x09 => Self::Apr,
            0x0a => Self::Ppr,
            0x0b => Self::Eoi,
            0x0c => Self::Rrd,
            0x0d => Self::Ldr,
            0x0e => Self::Dfr,
            0x0f => Self::Svr,
            0x10..=0x17 => Self::Isr((index - 0x10) as u8),
            0x18..=0x1f => Self::Tmr((index - 0x18) as u8),
            0x20..=0x27 => Self::Irr((index - 0x20) as u8),
            0x28 => Self::Esr,
            0x2f => Self::LvtCmci,
            0x30 => Self::IcrLow,
            0x31 => Self::IcrHigh,
            0x32 => Self::LvtTimer,
            0x33 => Self::LvtThermal,
            0x34 => Self::LvtPerf,
            0x35 => Self::LvtLint0,
            0x36 => Self::LvtLint1,
            0x37 => Self::LvtError,
            0x38 => Self::TimerInitial,
            0x39 => Self::TimerCurrent,
            0x3e => Self::TimerDivide,
            0x3f => Self::SelfIpi,
            _ => return None,
        })
    }

    const fn index(self) -> u32 {
        match self {
            Self::Id => 0x02,
            Self::Version => 0x03,
            Self::Tpr => 0x08,
            Self::Apr => 0x09,
            Self::Ppr => 0x0a,
            Self::Eoi => 0x0b,
            Self::Rrd => 0x0c,
            Self::Ldr => 0x0d,
            Self::Dfr => 0x0e,
            Self::Svr => 0x0f,
            Self::Isr(n) => 0x10 + (n as u32 & 7),
            Self::Tmr(n) => 0x18 + (n as u32 & 7),
            Self::Irr(n) => 0x20 + (n as u32 & 7),
            Self::Esr => 0x28,
            Self::LvtCmci => 0x2f,
            Self::IcrLow => 0x30,
            Self::IcrHigh => 0x31,
            Self::LvtTimer => 0x32,
            Self::LvtThermal => 0x33,
            Self::LvtPerf => 0x34,
            Self::LvtLint0 => 0x35,
            Self::LvtLint1 => 0x36,
            Self::LvtError => 0x37,
            Self::TimerInitial => 0x38,
            Self::TimerCurrent => 0x39,
            Self::TimerDivide => 0x3e,
            Self::SelfIpi => 0x3f,
        }
    }

    /// Its xAPIC offset.
    pub const fn xapic_offset(self) -> u32 {
        self.index() << 4
    }

    /// Its x2APIC MSR.
    pub const fn x2apic_msr(self) -> u32 {
        0x800 + self.index()
    }

    /// Whether it is read-only in `mode` (a write is ignored in xAPIC mode and raises #GP in
    /// x2APIC mode). The xAPIC ID is writable on some models; cellvisor treats it as
    /// read-only: cells are told their APIC IDs.
    pub const fn is_read_only(self, mode: ApicMode) -> bool {
        match self {
            Self::Id | Self::Ldr => matches!(mode, ApicMode::X2Apic) || matches!(self, Self::Id),
            Self::Version
            | Self::Apr
            | Self::Ppr
            | Self::Rrd
            | Self::Isr(_)
            | Self::Tmr(_)
            | Self::Irr(_)
            | Self::TimerCurrent => true,
            _ => false,
        }
    }

    /// Whether it is write-only in x2APIC mode (a read raises #GP): EOI and self IPI.
    pub const fn is_write_only(self, mode: ApicMode) -> bool {
        matches!(mode, ApicMode::X2Apic) && matches!(self, Self::Eoi | Self::SelfIpi)
    }

    /// Whether it is a local vector table entry with a delivery mode field.
    const fn has_delivery_mode(self) -> bool {
        matches!(
            self,
            Self::LvtCmci | Self::LvtThermal | Self::LvtPerf | Self::LvtLint0 | Self::LvtLint1
        )
    }
}

impl fmt::Display for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Id => "ID",
            Self::Version => "version",
            Self::Tpr => "TPR",
            Self::Apr => "APR",
            Self::Ppr => "PPR",
            Self::Eoi => "EOI",
            Self::Rrd => "RRD",
            Self::Ldr => "LDR",
            Self::Dfr => "DFR",
            Self::Svr => "SVR",
            Self::Isr(n) => return write!(f, "ISR{n}"),
            Self::Tmr(n) => return write!(f, "TMR{n}"),
            Self::Irr(n) => return write!(f, "IRR{n}"),
            Self::Esr => "ESR",
            Self::LvtCmci => "LVT CMCI",
            Self::IcrLow => "ICR",
            Self::IcrHigh => "ICR high",
            Self::LvtTimer => "LVT timer",
            Self::LvtThermal => "LVT thermal",
            Self::LvtPerf => "LVT performance counter",
            Self::LvtLint0 => "LVT LINT0",
            Self::LvtLint1 => "LVT LINT1",
            Self::LvtError => "LVT error",
            Self::TimerInitial => "timer initial count",
            Self::TimerCurrent => "timer current count",
            Self::TimerDivide => "timer divide configuration",
            Self::SelfIpi => "self IPI",
        };
        f.write_str(name)
    }
}

/// Which cell writes, from which CPU.
#[derive(Clone, Copy, Debug)]
pub struct Writer<'a> {
    /// The CPU (index) whose local APIC it is.
    pub cpu: u32,
    /// The cell's CPUs.
    pub cell_cpus: &'a CpuSet,
    /// Whether the cell is the root cell, which owns the legacy PIC (ExtINT through LINT0).
    pub root: bool,
}

/// What the hypervisor does with a write of a local APIC register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Write {
    /// Write the value to the physical register.
    Pass,
    /// Write the value to the physical register and keep what it means for logical
    /// destinations (done: the topology was updated). xAPIC LDR and DFR.
    PassTracked,
    /// Keep the value as the ICR's high half (xAPIC): the next ICR write sends with it.
    KeepIcrHigh(u32),
    /// Send (or ignore) what the ICR write asks for; the physical ICR is not written by the
    /// cell.
    Ipi(Route),
    /// Drop the write, as the hardware does for a read-only xAPIC register.
    Ignore,
    /// Raise #GP in the vCPU, as the hardware does for a read-only or missing x2APIC MSR.
    Fault,
}

/// A local APIC write that breaks the partition. Nothing was written or sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LapicViolation {
    /// The ICR write sends what the cell may not.
    Ipi(IpiViolation),
    /// A local vector table entry unmasked with a delivery mode the cell may not use: SMI and
    /// INIT (both leave the cell's control), ExtINT outside the root cell.
    LvtDeliveryMode(Register, DeliveryMode),
}

impl fmt::Display for LapicViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipi(why) => write!(f, "interrupt command: {why}"),
            Self::LvtDeliveryMode(register, mode) => {
                write!(f, "{register}: delivery mode {mode} is not allowed")
            }
        }
    }
}

impl core::error::Error for LapicViolation {}

/// LVT bit 16: masked.
const LVT_MASKED: u32 = 1 << 16;

/// Decides a write of `value` to `register` in `mode` by `writer`. For the ICR, `value` is
/// the low half in xAPIC mode (the high half is `icr_high`, what [`Write::KeepIcrHigh`] kept)
/// and the whole register in x2APIC mode. A self IPI, an EOI, the TPR, the timer, the LVT
/// timer and error entries and SVR are the cell's own and pass.
pub fn write(
    register: Register,
    mode: ApicMode,
    value: u64,
    icr_high: u32,
    writer: Writer<'_>,
    topology: &mut Topology,
) -> Result<Write, LapicViolation> {
    if register.is_read_only(mode) {
        return Ok(match mode {
            ApicMode::XApic => Write::Ignore,
            ApicMode::X2Apic => Write::Fault,
        });
    }
    Ok(match register {
        Register::IcrLow => {
            let icr = match mode {
                ApicMode::XApic => Icr::xapic(value as u32, icr_high),
                ApicMode::X2Apic => Icr::x2apic(value),
            };
            Write::Ipi(
                ipi::route(&icr, writer.cpu, writer.cell_cpus, topology)
                    .map_err(LapicViolation::Ipi)?,
            )
        }
        Register::IcrHigh => Write::KeepIcrHigh(value as u32),
        Register::Ldr => {
            topology.set_xapic_ldr(writer.cpu, value as u32);
            Write::PassTracked
        }
        Register::Dfr => {
            topology.set_xapic_dfr(writer.cpu, value as u32);
            Write::PassTracked
        }
        lvt if lvt.has_delivery_mode() => {
            let value = value as u32;
            let delivery = DeliveryMode::from_bits(value >> 8);
            let allowed = value & LVT_MASKED != 0
                || match delivery {
                    DeliveryMode::Fixed | DeliveryMode::Nmi => true,
                    DeliveryMode::ExtInt => writer.root,
                    _ => false,
                };
            if !allowed {
                return Err(LapicViolation::LvtDeliveryMode(lvt, delivery));
            }
            Write::Pass
        }
        _ => Write::Pass,
    })
}

/// What the hypervisor does with a read of a local APIC register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Read {
    /// Read the physical register.
    Pass,
    /// Return the kept ICR high half (xAPIC): the physical one holds the last IPI the
    /// hypervisor sent.
    IcrHigh,
    /// Raise #GP in the vCPU (a write-only x2APIC MSR).
    Fault,
}

/// Decides a read of `register` in `mode`.
pub const fn read(register: Register, mode: ApicMode) -> Read {
    if register.is_write_only(mode) {
        Read::Fault
    } else if matches!(register, Register::IcrHigh) {
        Read::IcrHigh
    } else {
        Read::Pass
    }
}

/// Whether the hypervisor must see writes of `register` in x2APIC mode (its MSR intercepted):
/// the ICR, and the LVT entries whose delivery mode could send an SMI or INIT. The rest (TPR,
/// EOI, self IPI, the timer, SVR, ESR) go to the hardware directly, so that the cell's own
/// interrupts and timer cost no exit. In xAPIC mode the register page traps as a whole.
pub const fn write_intercepted(register: Register) -> bool {
    matches!(register, Register::IcrLow) || register.has_delivery_mode()
}
