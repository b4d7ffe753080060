//! # cellvisor-apic
//!
//! Partitioning of x86 interrupts between the cells of a partitioning hypervisor, `no_std`,
//! no allocation, host-tested:
//!
//! - [`lapic`]: the local APIC's registers in both modes ([`Register`], xAPIC offsets and
//!   x2APIC MSRs) and what a cell may write: everything of its own CPU passes, an ICR write
//!   becomes a checked [`Route`], an LVT entry may not send SMI or INIT (ExtINT only in the
//!   root cell, which owns the PIC); [`lapic::write_intercepted`] says which x2APIC MSRs
//!   must trap at all, so that the timer, EOI and self IPIs stay direct.
//! - [`ipi::route`]: an ICR write limited to the sender's cell: shorthands and broadcasts
//!   mean the cell's CPUs, a physical or x2APIC logical destination naming another cell's CPU
//!   is an [`IpiViolation`], INIT and start-up IPIs become requests for the cell's own CPUs,
//!   SMI is never sent.
//! - [`ioapic::IoApic`]: IOAPIC partitioning by pin. Each CPU has its own index register,
//!   each pin one owner; an entry's destination must be the owner's CPUs; another cell's pin
//!   reads as masked for the root cell ([`Outcome::Refused`]) and stops any other cell
//!   ([`IoApicViolation`]).
//! - [`Topology`]: CPU indices and APIC IDs, and the logical IDs each CPU's cell chose.
//!
//! The hardware is reached through [`IoApicRegisters`] (an index-then-window access under the
//! caller's lock); the `fake` feature provides `fake::FakeIoApic`.
//!
//! ```
//! use cellvisor_apic::{route, ApicMode, Icr, IpiKind, IpiViolation, Route, Topology};
//! use cellvisor_config::CpuSet;
//!
//! // Four CPUs, APIC IDs 0, 2, 4, 6; a cell with CPUs 2 and 3.
//! let topology = Topology::new(&[0, 2, 4, 6]).unwrap();
//! let cell = CpuSet::from_cpus([2, 3]);
//!
//! // Fixed IPI, vector 0xf0, "all but self" from CPU 2: CPU 3 only.
//! let all_but_self = Icr::x2apic(0b11 << 18 | 0xf0);
//! assert_eq!(
//!     route(&all_but_self, 2, &cell, &topology),
//!     Ok(Route::Send { kind: IpiKind::Fixed(0xf0), cpus: CpuSet::from_cpus([3]) })
//! );
//!
//! // An NMI to APIC ID 0 (CPU 0, the root cell's): refused.
//! let nmi = Icr::x2apic(0 << 32 | 0b100 << 8);
//! assert_eq!(route(&nmi, 2, &cell, &topology), Err(IpiViolation::ForeignCpu(0)));
//! # let _ = ApicMode::X2Apic;
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

#[cfg(any(test, feature = "fake"))]
extern crate alloc;
#[cfg(test)]
extern crate std;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod icr;
pub mod ioapic;
pub mod ipi;
pub mod lapic;
mod topology;

#[cfg(test)]
mod tests;

pub use icr::{ApicMode, DeliveryMode, Icr, Shorthand};
pub use ioapic::{
    Access, Accessor, IoApic, IoApicRegisters, IoApicViolation, Outcome, PinError, Reason,
};
pub use ipi::{route, Ignored, IpiKind, IpiViolation, Route};
pub use lapic::{LapicViolation, Register};
pub use topology::{Topology, TopologyError, MAX_CPUS};

/// Compiles the examples in README.md.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
