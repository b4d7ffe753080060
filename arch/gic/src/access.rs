//! Decoded guest accesses, what the emulators answer, and [`Violation`].

use crate::cpu::CellId;
use crate::ownership::IntId;

/// The size of an access, as decoded from the data-abort syndrome (`ESR_EL2.ISS.SAS`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Width {
    /// 8 bits.
    Byte,
    /// 16 bits: no GIC register allows it (IHI 0048B §4.1.4, IHI 0069 §12.1.3).
    Half,
    /// 32 bits.
    Word,
    /// 64 bits: only 64-bit GICv3 registers allow it.
    Double,
}

impl Width {
    /// The size in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            Self::Byte => 1,
            Self::Half => 2,
            Self::Word => 4,
            Self::Double => 8,
        }
    }

    /// From a size in bytes (1, 2, 4 or 8).
    pub const fn from_bytes(bytes: usize) -> Option<Self> {
        match bytes {
            1 => Some(Self::Byte),
            2 => Some(Self::Half),
            4 => Some(Self::Word),
            8 => Some(Self::Double),
            _ => None,
        }
    }

    /// All ones in the low `bytes()` bytes.
    pub(crate) const fn mask(self) -> u64 {
        match self {
            Self::Double => u64::MAX,
            _ => (1 << (8 * self.bytes())) - 1,
        }
    }
}

/// Read, or write of a value (in the low `width` bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AccessKind {
    /// A load.
    Read,
    /// A store of this value.
    Write(u64),
}

/// One trapped access to an emulated register block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MmioAccess {
    /// Byte offset from the start of the block (the distributor frame, the redistributor
    /// region).
    pub offset: usize,
    /// Access size.
    pub width: Width,
    /// Load or store.
    pub kind: AccessKind,
}

impl MmioAccess {
    /// A load of `width` at `offset`.
    pub const fn read(offset: usize, width: Width) -> Self {
        Self {
            offset,
            width,
            kind: AccessKind::Read,
        }
    }

    /// A store of `value` (truncated to `width`) at `offset`.
    pub const fn write(offset: usize, width: Width, value: u64) -> Self {
        Self {
            offset,
            width,
            kind: AccessKind::Write(value & width.mask()),
        }
    }
}

/// What an emulated access did, for the caller to complete the trapped instruction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// A load: put this value in the destination register.
    Read(u64),
    /// A store: done (possibly filtered to nothing).
    Written,
}

/// The register block a [`Violation`] happened in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Block {
    /// The distributor (GICv2 or GICv3).
    Distributor,
    /// The GICv3 redistributor region.
    Redistributors,
    /// A write of `ICC_SGI1R_EL1` (reported with offset 0 and the written value).
    IccSgi1r,
}

/// Why an access is a [`Violation`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reason {
    /// Nothing the cell may access is at this offset (reserved, implementation defined,
    /// or a feature the emulation does not offer, such as extended SPIs).
    ReservedOffset,
    /// The register does not support this width, or the access is not naturally aligned.
    BadWidth,
    /// The write tries to change an interrupt the cell does not own (only with
    /// [`ForeignWrites::Report`]).
    ForeignIrq(IntId),
    /// The write targets or routes to a CPU outside the cell (only with
    /// [`ForeignWrites::Report`] for targets; always for a foreign redistributor).
    ForeignCpu(usize),
    /// `GICD_SGIR.TargetListFilter` = `0b11`, reserved (IHI 0048B §4.3.15).
    ReservedSgiFilter,
    /// A routing the emulation refuses because it could reach CPUs outside the cell:
    /// `GICD_IROUTER<n>.Interrupt_Routing_Mode` = 1 ("any participating PE"), or an affinity
    /// that is no CPU of the machine (only with [`ForeignWrites::Report`]).
    UnsafeRouting,
}

/// An access by which a cell broke its partition. The caller stops the cell and reports it;
/// no register was changed by the access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Violation {
    /// The cell that made the access.
    pub cell: CellId,
    /// The register block.
    pub block: Block,
    /// The access (its `offset` is relative to the block).
    pub access: MmioAccess,
    /// What was wrong.
    pub reason: Reason,
}

impl Violation {
    /// The offset of the access from the start of its block.
    pub const fn offset(&self) -> usize {
        self.access.offset
    }
}

impl core::fmt::Display for Block {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Distributor => "GIC distributor",
            Self::Redistributors => "GIC redistributors",
            Self::IccSgi1r => "ICC_SGI1R_EL1",
        })
    }
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::ReservedOffset => f.write_str("no register the cell may access is there"),
            Self::BadWidth => f.write_str("the register does not take this width or alignment"),
            Self::ForeignIrq(irq) => write!(f, "interrupt {} is not the cell's", irq.get()),
            Self::ForeignCpu(cpu) => write!(f, "CPU {cpu} is not the cell's"),
            Self::ReservedSgiFilter => f.write_str("target list filter 0b11 is reserved"),
            Self::UnsafeRouting => f.write_str("the routing could reach CPUs outside the cell"),
        }
    }
}

/// `cell 1: write of 0x1 (4 bytes) at offset 0x104 of the GIC distributor: interrupt 40 is
/// not the cell's`.
impl core::fmt::Display for Violation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "cell {}: ", self.cell.get())?;
        match self.access.kind {
            AccessKind::Read => f.write_str("read")?,
            AccessKind::Write(value) => write!(f, "write of {value:#x}")?,
        }
        write!(
            f,
            " ({} bytes) at offset {:#x} of the {}: {}",
            self.access.width.bytes(),
            self.access.offset,
            self.block,
            self.reason
        )
    }
}

impl core::error::Error for Violation {}

/// What to do with a write that would change interrupts, targets or routes the cell does not
/// own, in registers that also hold some the cell owns.
///
/// Stock kernels initialise the whole distributor word by word at boot (Linux's GIC drivers
/// disable, prioritise and target every SPI the distributor implements), so a cell running
/// one sees foreign interrupts like unimplemented ones: reads as zero, writes ignored
/// ([`Ignore`](Self::Ignore), the default). A cell known to touch only its own interrupts can
/// be held to that with [`Report`](Self::Report).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum ForeignWrites {
    /// Drop the foreign part of the write silently.
    #[default]
    Ignore,
    /// Report the whole write as a [`Violation`] (nothing is written). Foreign fields read
    /// as zero, so a read-modify-write that puts that zero back is no violation: only a
    /// non-zero value (a set, clear or field value) for a foreign interrupt is.
    Report,
}
