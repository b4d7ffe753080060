//! Register access: the drivers are written against [`Mmio`] from `cellvisor-mmio`;
//! [`MmioRegion`] is the real implementation over device memory.
//!
//! Host tests replace [`MmioRegion`] with a fake that records writes and scripts what status
//! registers read (`fake::FakeMmio`, feature `fake`).

pub use cellvisor_mmio::{Mmio, MmioAddr, MmioRegion};
