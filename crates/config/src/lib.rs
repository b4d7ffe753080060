//! # cellvisor-config
//!
//! System and cell configurations of a static partitioning hypervisor: TOML for people, a
//! versioned, checksummed little-endian binary for the hypervisor, and the same validation on
//! both sides.
//!
//! - **Binary format** ([`layout`]): a 16-byte header (magic `CVCF`, format revision,
//!   system or cell, architecture, total size, CRC-32) and fixed `#[repr(C)]` structures read
//!   in place with `zerocopy`. `docs/config-format.md` documents every field.
//! - **Views** ([`SystemConfigView`], [`CellConfigView`]): `no_std`, no allocation, no copy.
//!   Parsing checks the structure, then every element, and returns typed [`Error`]s that name
//!   the element: `memory region 3: size 0x1001 is not page aligned`.
//! - **Cross-checks** ([`check_cells`], [`check_new_cell`]): cells against the hardware the
//!   system describes (no mapping of hypervisor memory, interrupt controller, IOMMU or ECAM
//!   registers), against the root cell they borrow from (CPUs, memory, interrupt lines, ports,
//!   PCI devices, stream IDs) and against each other (nothing owned twice, the root cell keeps a
//!   CPU).
//! - **Owned configurations** (feature `alloc`): `SystemConfig`, `CellConfig`, encoded
//!   with `to_bytes` and read back with `from_bytes`.
//! - **Host side**: the TOML format (module `text`) and compilation with every problem
//!   reported as `file:line:column` (module `host`) with feature `toml`; import of Jailhouse
//!   `.cell` files of revisions 13 and 14 (module `jailhouse`) with feature `jailhouse`; the
//!   `cellvisor-config`
//!   command with feature `cli` (the only one that brings clap and anyhow).
//!
//! ```
//! use cellvisor_config::{CellConfigView, Element, Problem};
//! # #[cfg(feature = "toml")] {
//! use cellvisor_config::text::cell_from_toml;
//!
//! let cell = cell_from_toml(r#"
//!     architecture = "aarch64"
//!     name = "demo"
//!     cpus = [3]
//!     irqs = [40]
//!     console = { type = "pl011", address = 0x904_0000 }
//!
//!     [[memory]]
//!     phys = 0x7f00_0000
//!     virt = 0
//!     size = 0x100_0000
//!     flags = ["read", "write", "execute", "dma", "loadable"]
//!
//!     [[memory]]
//!     phys = 0x904_0000
//!     size = 0x1001
//!     flags = ["read", "write", "io"]
//! "#).unwrap();
//!
//! // The hypervisor side: read in place, validated, typed errors.
//! let bytes = cell.encode().unwrap();
//! let error = CellConfigView::parse(&bytes).unwrap_err();
//! assert_eq!(error.element, Element::MemoryRegion(1));
//! assert!(matches!(error.problem, Problem::NotPageAligned { value: 0x1001, .. }));
//! assert_eq!(error.to_string(), "memory region 1: size 0x1001 is not page aligned");
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "toml")]
extern crate std;

pub mod check;
mod cover;
mod error;
#[cfg(feature = "toml")]
pub mod host;
#[cfg(feature = "jailhouse")]
pub mod jailhouse;
pub mod layout;
#[cfg(feature = "alloc")]
mod owned;
#[cfg(feature = "toml")]
pub mod text;
mod types;
mod view;

/// The README's example, compiled and run as a doctest.
#[cfg(all(doctest, feature = "toml"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use check::{check_cells, check_new_cell};
pub use error::{Element, Error, Field, FrameKind, List, Owner, Problem, Scope, Sensitive, Space};
#[cfg(feature = "alloc")]
pub use owned::{Cell, CellConfig, SystemConfig};
pub use types::*;
pub use view::{peek_kind, read_header, CellConfigView, CellView, Report, SystemConfigView};
