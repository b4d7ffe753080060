//! # cellvisor-paging
//!
//! One page-table engine for the translation tables a partitioning hypervisor needs, with
//! four formats:
//!
//! | format | input → output | used for |
//! |---|---|---|
//! | [`Stage2`] | guest-physical → physical | Arm cells (VTTBR_EL2) |
//! | [`Stage1El2`] | virtual → physical | the hypervisor's own map on Arm (TTBR0_EL2) |
//! | [`Ept`] | guest-physical → physical | Intel VMX cells (EPTP) |
//! | [`LongMode`] ([`Npt`], [`HostTables`]) | guest-physical or virtual → physical | AMD SVM cells (nCR3), the hypervisor's own map on x86 (CR3) |
//!
//! The engine ([`PageTable`]) maps ranges with the largest blocks alignment allows, unmaps and
//! re-protects ranges (splitting blocks as needed and folding tables back into blocks when they
//! become uniform), translates addresses, iterates over mappings and frees the tree. Changes to
//! live tables follow break-before-make and call a [`TlbInvalidate`] hook with exactly the
//! ranges that became stale. A failed operation leaves the tree unchanged. A [`PageTable`]
//! frees its frames on [`PageTable::destroy`]; an [`OwnedPageTable`] holds its memory too and
//! frees them when dropped.
//!
//! The engine reaches memory only through [`PhysMemory`] and [`FrameAllocator`], so it runs in
//! the hypervisor ([`LinearMemory`]) and on the host against a fake (feature `fake`).
//!
//! ```
//! # #[cfg(feature = "fake")] {
//! use cellvisor_paging::fake::FakeMemory;
//! use cellvisor_paging::{
//!     Attributes, GuestPhysAddr, MapMode, Mapping, NotLive, PageTable, PhysAddr, Stage2,
//! };
//!
//! let mut mem = FakeMemory::new(PhysAddr::new(0x8000_0000), 64);
//! let mut table = PageTable::new(Stage2::new(40).unwrap(), &mut mem).unwrap();
//! // 1 GiB of RAM at IPA 0x4000_0000: one level-1 block descriptor.
//! let ram = Mapping {
//!     input: GuestPhysAddr::new(0x4000_0000),
//!     output: PhysAddr::new(0x8_0000_0000),
//!     size: 1 << 30,
//!     attributes: Attributes::RAM_RWX,
//! };
//! table.map(&mut mem, &mut NotLive, ram, MapMode::New).unwrap();
//! let t = table.translate(&mem, GuestPhysAddr::new(0x4000_1234)).unwrap();
//! assert_eq!(t.output, PhysAddr::new(0x8_0000_1234));
//! assert_eq!(t.size, 1 << 30);
//! assert_eq!(table.stats(&mem).frames, 2); // the two concatenated root tables, nothing else
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "fake")]
extern crate alloc;

mod addr;
mod attr;
mod error;
pub mod format;
mod memory;
mod owned;
mod pool;
mod table;
mod tlb;

#[cfg(feature = "fake")]
pub mod fake;

/// The README's example, compiled and run as a doctest.
#[cfg(all(doctest, feature = "fake"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use addr::{Address, GuestPhysAddr, PhysAddr, VirtAddr, PAGE_SIZE};
pub use attr::{Access, Attributes, Cacheability, MemoryType};
pub use error::{ConfigError, Error, Location, Operation, Reason};
pub use format::arm_regs::PaSize;
pub use format::ept::{Ept, Eptp};
pub use format::long_mode::{HostTables, LongMode, Npt};
pub use format::stage1_el2::{Stage1El2, Tcr, MAIR_EL2};
pub use format::stage2::{Stage2, Vtcr, Vttbr};
pub use format::{Entry, Format, LargePages, Level};
pub use memory::{
    Descriptor, FrameAllocator, LinearMemory, PhysMemory, TableMemory, ENTRIES_PER_TABLE,
};
pub use owned::OwnedPageTable;
pub use pool::FramePool;
pub use table::{MapMode, Mapping, Mappings, PageTable, Stats, Translation};
pub use tlb::{NotLive, Stale, TlbInvalidate};
