//! # cellvisor-gic
//!
//! Partitioning of the Arm Generic Interrupt Controller between the cells of a partitioning
//! hypervisor, `no_std`, no allocation, host-tested against fake registers:
//!
//! - [`IrqOwnership`]: which [`CellId`] owns each SPI; SGIs/PPIs follow the CPUs, minus the
//!   ones the hypervisor reserves. [`CpuSet`] is a cell's CPUs.
//! - [`v2::DistributorV2`]: GICv2 distributor emulation. A trapped access becomes the allowed
//!   part on the physical distributor, or a [`Violation`] to stop the cell with.
//!   [`v2::filter_sgir`] limits SGIs to the cell's CPUs.
//! - [`v3::DistributorV3`], [`v3::Redistributors`], [`v3::filter_sgi1r`]: the same for GICv3
//!   (`GICD_IROUTER<n>` routes only to the cell's CPUs, redistributor frames only of the cell's
//!   CPUs, `ICC_SGI1R_EL1` with `IRM` and affinity routing).
//! - [`line`](mod@line): what happens to an interrupt line's state when it changes owner (quiesced,
//!   the root cell's settings captured and given back).
//! - [`lr::ListRegisters`]: virtual interrupt injection through GICv2 `GICH_LR<n>` or GICv3
//!   `ICH_LR<n>_EL2`, with a fixed-size overflow queue refilled on the maintenance interrupt.
//!
//! Physical registers are reached through [`GicRegisters`] ([`MmioRegion`] on hardware) and
//! [`lr::ListRegisterFile`]; the `fake` feature provides in-memory versions with the GIC's
//! set/clear semantics.
//!
//! ```
//! # #[cfg(feature = "fake")] {
//! use cellvisor_gic::fake::FakeGic;
//! use cellvisor_gic::v2::{Accessor, DistributorV2, GICD_ISENABLER};
//! use cellvisor_gic::{CellId, CpuSet, ForeignWrites, IntId, IrqOwnership, MmioAccess, Width};
//!
//! let root = CellId::new(0);
//! let cell = CellId::new(1);
//! let mut gicd = FakeGic::new();
//! gicd.set(0x004, 0b111); // GICD_TYPER.ITLinesNumber = 7: 256 INTIDs
//! let dist = DistributorV2::probe(&mut gicd, root, ForeignWrites::Ignore);
//! let mut owners = IrqOwnership::new(dist.implemented_irqs());
//! owners.assign(cell, IntId::new(33)).unwrap();
//!
//! // The cell (CPUs 2 and 3, running on 2) enables INTIDs 32..64: only 33 is its own.
//! let by = Accessor { cell, cpus: CpuSet::from_bits(0b1100), cpu: 2 };
//! let enable_all = MmioAccess::write(GICD_ISENABLER + 4, Width::Word, 0xffff_ffff);
//! dist.access(&mut gicd, &owners, by, enable_all).unwrap();
//! assert_eq!(gicd.get(GICD_ISENABLER + 4), 1 << 1);
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

#[cfg(any(test, feature = "fake"))]
extern crate alloc;
#[cfg(test)]
extern crate std;

mod access;
mod cpu;
mod distributor;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod line;
pub mod lr;
mod ownership;
mod perirq;
mod regs;
pub mod v2;
pub mod v3;

#[cfg(test)]
mod tests;

/// The highest priority (the lowest value) a cell can give its interrupts in `IPRIORITYR`
/// registers: a higher one is stored as this. The priorities above, `0x00..0x10`, are left
/// to the hypervisor's own interrupts (its wake-up SGI and timer), so that it can wait with
/// the priority mask at `0x10`, sleeping through every cell interrupt. In the Non-secure
/// view that a GIC with two Security states gives, `0x00` is one level of sixteen, and the
/// one above `0x10`. Kernels use `0xa0` (Linux's default) and `0x20` or `0x80` for
/// pseudo-NMIs; 16 levels (4 bits) is the least a GIC implements.
pub const HIGHEST_CELL_PRIORITY: u8 = 0x10;

pub use access::{AccessKind, Block, ForeignWrites, MmioAccess, Outcome, Reason, Violation, Width};
pub use cpu::{CellId, CpuSet, Mpidr, Topology};
pub use distributor::{Distributor, Version};
pub use ownership::{IntId, IrqOwnership, OwnershipError};
pub use regs::{GicRegisters, MmioAddr, MmioRegion};

/// Compiles the examples in README.md.
#[cfg(all(doctest, feature = "fake"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
