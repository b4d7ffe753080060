//! Physical register access: the emulators write through [`GicRegisters`] (the `Mmio` trait
//! of `cellvisor-mmio`: aligned 32-bit accesses by byte offset inside a GIC register block,
//! 64-bit registers such as `GICD_IROUTER<n>` as two halves, low first, which IHI 0069
//! §12.1.3 allows), and [`MmioRegion`] is the real implementation over device memory.
//!
//! Reads take `&mut self`: the emulators run under the caller's lock (see
//! [`DistributorV2`](crate::v2::DistributorV2)), and fakes record accesses.

pub use cellvisor_mmio::{Mmio as GicRegisters, MmioAddr, MmioRegion};
