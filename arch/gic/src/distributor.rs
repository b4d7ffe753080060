//! [`Distributor`]: the distributor emulation of either GIC version behind one API.

use crate::access::{MmioAccess, Outcome, Violation};
use crate::cpu::{CellId, Topology};
use crate::ownership::IrqOwnership;
use crate::regs::GicRegisters;
use crate::v2::{Accessor, DistributorV2};
use crate::v3::DistributorV3;
use crate::ForeignWrites;

/// The GIC architecture version.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Version {
    /// GICv2 (IHI 0048B): memory-mapped CPU interface, 8 CPUs at most.
    V2,
    /// GICv3 (IHI 0069): redistributors, affinity routing, system-register CPU interface.
    V3,
}

/// The distributor emulation of a GICv2 or a GICv3: what a hypervisor calls for every
/// trapped access to the distributor frame, whichever version the machine has. The
/// version-specific types ([`DistributorV2`], [`DistributorV3`]) remain for code that
/// knows its version.
#[derive(Clone, Copy, Debug)]
pub enum Distributor {
    /// A GICv2's.
    V2(DistributorV2),
    /// A GICv3's.
    V3(DistributorV3),
}

impl Distributor {
    /// An emulator of the physical distributor behind `regs` (its `GICD_TYPER` and
    /// `GICD_IIDR`), of `version`, with the root cell `root` and `policy` for writes to
    /// interrupts and CPUs the accessing cell does not own.
    pub fn probe<R: GicRegisters + ?Sized>(
        regs: &mut R,
        version: Version,
        root: CellId,
        policy: ForeignWrites,
    ) -> Self {
        match version {
            Version::V2 => Self::V2(DistributorV2::probe(regs, root, policy)),
            Version::V3 => Self::V3(DistributorV3::probe(regs, root, policy)),
        }
    }

    /// The version.
    pub const fn version(&self) -> Version {
        match self {
            Self::V2(_) => Version::V2,
            Self::V3(_) => Version::V3,
        }
    }

    /// The number of INTIDs below 1020 the distributor implements, for
    /// [`IrqOwnership::new`].
    pub const fn implemented_irqs(&self) -> u32 {
        match self {
            Self::V2(d) => d.implemented_irqs(),
            Self::V3(d) => d.implemented_irqs(),
        }
    }

    /// Emulates one trapped access by `by`. `topology` maps GICv3 routing affinities to
    /// CPUs (a GICv2 distributor targets CPU interfaces by number and does not use it).
    pub fn access<R: GicRegisters + ?Sized>(
        &self,
        regs: &mut R,
        ownership: &IrqOwnership,
        by: Accessor,
        topology: &Topology<'_>,
        access: MmioAccess,
    ) -> Result<Outcome, Violation> {
        match self {
            Self::V2(d) => d.access(regs, ownership, by, access),
            Self::V3(d) => d.access(regs, ownership, by, topology, access),
        }
    }
}
