//! # cellvisor-inmate
//!
//! A minimal runtime for *inmates*, the bare-metal AArch64 programs that run in cellvisor
//! cells. The hypervisor enters an inmate at EL1 with the MMU off, at the first byte of its
//! image (guest-physical 0), with all of DAIF masked. This crate provides:
//!
//! - the entry code (`_start`: relocation of the position-independent image, stack, `.bss`,
//!   FP/SIMD access, exception vectors) and the linker script (`inmate.ld`, see the README for
//!   how a binary links with it), so that one image runs wherever it is loaded;
//! - the virtual count at the inmate's first instruction ([`start_counter`]);
//! - [`Platform`] discovery from the device tree in x0 at entry ([`tree`], a program started
//!   like a Linux kernel), else from the cell's communication region ([`comm`]), or a
//!   built-in platform for bare testing on QEMU (features `bare-virt` and `bare-zcu102`);
//! - PSCI calls and the start of a second CPU at a Rust function ([`psci`]);
//! - a polled console for the PL011 and the Cadence UART ([`console`], [`println!`]);
//! - the generic timer's virtual timer ([`timer`]), and a periodic tick to sleep on between
//!   polls ([`ticker`]);
//! - a GICv2/GICv3 driver for one CPU's own interrupts ([`gic`]) and IRQ dispatch to a
//!   handler function ([`irq`]);
//! - the shutdown vote of the communication region ([`comm::Mailbox`]).
//!
//! Every exception other than an IRQ prints its syndrome (ESR_EL1, ELR_EL1, FAR_EL1) on the
//! console and parks the CPU; so does a panic. A program that provokes one on purpose runs
//! the access under [`fault::catch`], which records it and resumes after the instruction.
//!
//! The runtime drives one CPU: it starts no other by itself ([`psci::start_cpu`] lends one
//! more CPU a stack), and bare builds park every CPU but the first.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! use cellvisor_inmate::comm::{Mailbox, Message, Reply};
//! use cellvisor_inmate::{println, Platform};
//!
//! cellvisor_inmate::entry!(main);
//!
//! fn main(platform: &Platform) -> ! {
//!     println!("hello from a cell, GICv{}", platform.gic_version.get());
//!     let mut mailbox = Mailbox::new();
//!     loop {
//!         if mailbox.poll() == Some(Message::ShutdownRequest) {
//!             mailbox.reply(Reply::Approved);
//!             cellvisor_inmate::park();
//!         }
//!     }
//! }
//! ```

#![no_std]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod comm;
pub mod console;
pub mod esr;
pub mod fault;
pub mod gic;
pub mod irq;
pub mod mmio;
pub mod platform;
pub mod psci;
pub mod stats;
pub mod sysreg;
pub mod ticker;
pub mod timer;
pub mod tree;

#[cfg(inmate_hw)]
mod rt;

pub use cellvisor_abi::comm::Platform;
pub use timer::start_counter;

/// The FP/SIMD registers V0..V31 and FPSR as the inmate found them at its first
/// instruction, ORed together: 0 if whoever ran on the CPU before (another vCPU, another cell)
/// left nothing behind. 0 in host builds.
pub fn entry_fp_residue() -> u64 {
    ENTRY_FP.load(core::sync::atomic::Ordering::Relaxed)
}

static ENTRY_FP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// x0 at the inmate's first instruction: 0 when `cellvisor cell start` started it (the
/// platform is in the communication region), the address of a device tree when it was
/// started like a Linux kernel (`cellvisor cell linux --raw`; see [`tree`]). 0 in host
/// builds.
pub fn boot_argument() -> u64 {
    BOOT_ARGUMENT.load(core::sync::atomic::Ordering::Relaxed)
}

static BOOT_ARGUMENT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Keeps x0 at entry, for [`boot_argument`].
#[cfg_attr(not(inmate_hw), allow(dead_code))]
pub(crate) fn set_boot_argument(value: u64) {
    BOOT_ARGUMENT.store(value, core::sync::atomic::Ordering::Relaxed);
}

/// Keeps what `_start` found in the FP/SIMD registers, for [`entry_fp_residue`].
#[cfg_attr(not(inmate_hw), allow(dead_code))]
pub(crate) fn set_entry_fp_residue(value: u64) {
    ENTRY_FP.store(value, core::sync::atomic::Ordering::Relaxed);
}

/// Defines the inmate's main function: `entry!(main)` with `fn main(platform: &Platform) -> !`.
///
/// The runtime calls it once the stack, `.bss`, the exception vectors and the console (if the
/// platform has a UART) are set up, with all interrupts still masked.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The inmate's main function, called by the runtime (`cellvisor_inmate::entry!`).
        #[unsafe(export_name = "inmate_main")]
        fn __cellvisor_inmate_main(platform: &$crate::Platform) -> ! {
            let main: fn(&$crate::Platform) -> ! = $main;
            main(platform)
        }
    };
}

/// Stops this CPU for good: masks every exception, stops the virtual timer and sleeps in WFI
/// forever (WFE would not sleep on every machine: QEMU's multi-threaded TCG treats it as a
/// no-op, so the CPU would spin). A hypervisor shutting the cell down finds it here; its
/// interrupts still reach the hypervisor, whatever the masks at EL1.
pub fn park() -> ! {
    irq::disable();
    timer::stop();
    loop {
        sysreg::wfi();
    }
}
