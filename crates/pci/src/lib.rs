//! # cellvisor-pci
//!
//! PCI configuration space shared by the cells of a partitioning hypervisor, `no_std`, no
//! allocation, host-tested: each function belongs to one cell, and every configuration access
//! (x86's port pair 0xCF8/0xCFC, or a memory-mapped ECAM window on any architecture) is
//! trapped and decided here.
//!
//! - [`ConfigAddress`] and [`ecam_decode`]: what an access addresses.
//! - [`Devices`]: which cell owns which function; what is not given to a cell is the root
//!   cell's.
//! - [`PciConfig`]: the emulation. Each CPU has its own CONFIG_ADDRESS latch; another cell's
//!   function reads as absent (all ones) and ignores writes; a cell cannot move its BARs
//!   (their sizing is emulated from what the hypervisor measured at assignment), write a
//!   bridge's header, or aim its MSI at anything its [`MsiPolicy`] refuses.
//!
//! The hardware is reached through [`ConfigSpace`]; the `fake` feature provides
//! `fake::FakeConfigSpace`.
//!
//! ```
//! # #[cfg(feature = "fake")] {
//! use cellvisor_cell::CellId;
//! use cellvisor_config::Bdf;
//! use cellvisor_pci::fake::FakeConfigSpace;
//! use cellvisor_pci::{Accessor, AnyMsi, Outcome, PciConfig};
//!
//! let edu = Bdf::new(0, 4, 0).unwrap();
//! let mut hw = FakeConfigSpace::new();
//! hw.add_function(edu, 0x1234, 0x11e8, &[0xfff0_0000]); // one 1 MiB memory BAR
//! let mut pci = PciConfig::new();
//! pci.assign(&mut hw, CellId(1), &[edu]).unwrap();
//!
//! // The root cell no longer sees the device: vendor ID 0xffff.
//! let root = Accessor { cell: CellId::ROOT, cpu: 0 };
//! assert_eq!(pci.config(&mut hw, &AnyMsi, root, edu, 0, 4, None), Ok(Outcome::Read(u32::MAX)));
//! // The cell does.
//! let cell = Accessor { cell: CellId(1), cpu: 2 };
//! assert_eq!(pci.config(&mut hw, &AnyMsi, cell, edu, 0, 4, None), Ok(Outcome::Read(0x11e8_1234)));
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

#[cfg(any(test, feature = "fake"))]
extern crate alloc;
#[cfg(test)]
extern crate std;

mod address;
mod devices;
mod emulation;
#[cfg(any(test, feature = "fake"))]
pub mod fake;

#[cfg(test)]
mod tests;

pub use address::{ecam_decode, ConfigAddress, CONFIG_ADDRESS, CONFIG_DATA};
pub use devices::{DeviceError, Devices, MAX_ASSIGNED};
pub use emulation::{
    Accessor, AnyMsi, ConfigSpace, MsiPolicy, Outcome, PciConfig, PciViolation, Reason, MAX_CPUS,
};

/// Compiles the examples in README.md.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
