//! # cellvisor-linux
//!
//! Linux's boot protocol for loaders and hypervisors, `no_std` and without allocation, tested
//! on the host:
//!
//! - [`memory_map`]: a physical memory map in the e820 sense ([`MemoryMap`]), built from a
//!   firmware's map and changed range by range, e.g. to reserve the hypervisor's memory and
//!   the memory other cells may load into before the root cell's kernel sees the map.
//! - [`arm64`]: the arm64 `Image` header ([`arm64::Image`]) and where a loader puts the
//!   kernel, its device tree and its initramfs ([`arm64::Image::place`]).
//! - `tree` (feature `tree`, with `alloc`): the device tree of Linux in a cell on Arm
//!   (`tree::CellTree`): its CPUs with PSCI, its RAM, its part of the GIC, the generic
//!   timer, its UART, `/chosen`.
//! - [`x86`]: the bzImage's setup header ([`x86::BzImage`]), where its protected-mode kernel
//!   may go ([`x86::BzImage::place`]), and the zero page ([`x86::BootParams`]).
//!
//! ```
//! use cellvisor_linux::memory_map::{Kind, MemoryMap};
//!
//! // What the firmware reported, then the hypervisor's 8 MiB at 16 MiB taken away.
//! let mut map = MemoryMap::new();
//! map.set(0, 0x9fc00, Kind::Ram)?;
//! map.set(0x10_0000, 0x7fe0_0000, Kind::Ram)?;
//! map.set(0x100_0000, 0x80_0000, Kind::Reserved)?;
//! assert_eq!(map.ranges().len(), 4);
//! assert!(map.is_all(0x180_0000, 0x100_0000, Kind::Ram));
//! assert_eq!(map.kind_at(0x120_0000), Some(Kind::Reserved));
//! # Ok::<(), cellvisor_linux::memory_map::MapError>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

pub mod arm64;
pub mod memory_map;
#[cfg(feature = "tree")]
pub mod tree;
pub mod x86;

pub use memory_map::MemoryMap;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
