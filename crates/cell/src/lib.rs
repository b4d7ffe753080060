//! # cellvisor-cell
//!
//! The books of a static partitioning hypervisor: which cell owns which CPU, which range of
//! physical memory and which interrupt line, with Jailhouse semantics.
//!
//! - At boot the **root cell** (id 0) owns everything it is given ([`Registry::new`],
//!   [`Registry::from_system`]).
//! - [`Registry::create`] checks a cell configuration against what the root cell owns —
//!   every problem is a typed [`Problem`] that prints as `cell "demo": CPU 3 is online in
//!   the root cell` and maps to a [`cellvisor_abi::Error`] code — then moves CPUs, memory
//!   and interrupt lines to the new cell through a [`Partition`] (the hypervisor's stage-2
//!   tables, interrupt routing and CPU hand-over). If a step fails, the earlier ones are
//!   undone in reverse order and the registry is unchanged.
//! - The root cell's region list is split exactly where cells take memory out of it
//!   (`[0x4000_0000, 0x8000_0000)` minus `[0x7f00_0000, 0x8000_0000)` leaves
//!   `[0x4000_0000, 0x7f00_0000)`) and is recomputed from the boot-time list, so after
//!   [`Registry::destroy`] it is that list again, byte for byte.
//! - States follow the management commands ([`Registry::set_state`]): created → loaded →
//!   running → shut down or failed; [`Registry::loadable`] says where an image goes.
//!
//! Pure logic, `no_std`, no allocation; the tests drive it with a fake [`Partition`].

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

mod error;
mod id;
mod irq;
mod partition;
mod region;
mod registry;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use error::{CreateError, DestroyError, LoadError, Problem, RootError, StateError};
pub use id::CellId;
pub use irq::IrqSet;
pub use partition::{Failure, Partition, Step};
pub use region::{Region, Regions, MAX_REGIONS};
pub use registry::{
    first_shared_irq, Cell, PciFunctions, Ports, Registry, MAX_PCI_FUNCTIONS, MAX_PORT_RANGES,
};
