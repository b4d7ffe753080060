//! # cellvisor-console
//!
//! The debug console of a partitioning hypervisor, `no_std` and without allocation:
//!
//! - [`Uart`]: the transmit-side contract (`write_byte` blocks until the transmitter takes the
//!   byte, `flush` until it is on the wire), and [`CrLfWriter`], [`core::fmt::Write`] with
//!   `"\n"` sent as `"\r\n"`.
//! - Polled drivers: [`Pl011`] (Arm PrimeCell UART, QEMU `virt`) and [`CadenceUart`] (Xilinx
//!   Zynq UltraScale+ PS UART, zcu102). They reach their registers through the [`Mmio`] trait:
//!   [`MmioRegion`] on hardware, `fake::FakeMmio` (feature `fake`) in host tests.
//! - [`Console`]: one UART shared by all CPUs, a [`log`] backend writing
//!   `[<cpu>] <LEVEL> <message>` lines that never interleave, and an emergency path for panic
//!   reports that never deadlocks. The [`console`](mod@console) module documents the locking
//!   rules.
//!
//! ```no_run
//! use cellvisor_console::{MmioAddr, Pl011};
//! use log::LevelFilter;
//!
//! fn cpu_id() -> usize {
//!     0 // MPIDR_EL1.Aff0 on the hypervisor's Arm CPUs
//! }
//!
//! static mut UART: Option<Pl011<cellvisor_console::MmioRegion>> = None;
//!
//! // SAFETY: QEMU virt's PL011 is identity-mapped as device memory and nothing else drives it;
//! // this runs once on the boot CPU, before any other CPU could touch `UART`.
//! let uart = unsafe { (*(&raw mut UART)).insert(Pl011::at(MmioAddr::new(0x0900_0000))) };
//! uart.init();
//! cellvisor_console::init(uart, cpu_id, LevelFilter::Info).unwrap();
//! log::info!("cellvisor starting"); // "[0] INFO cellvisor starting\r\n"
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

#[cfg(any(test, feature = "fake"))]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod cadence;
pub mod console;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
mod mmio;
pub mod pl011;
mod uart;

pub use cadence::CadenceUart;
pub use console::{
    console, emergency_write_fmt, init, set_level, write_fmt, Console, ConsoleGuard, ConsoleUart,
    EmergencyWrite,
};
pub use mmio::{Mmio, MmioAddr, MmioRegion};
pub use pl011::Pl011;
pub use uart::{CrLfWriter, Uart};

/// Prints to the global console, as one piece; `"\n"` goes out as `"\r\n"`.
///
/// Not for exception handlers or panic reports: see [`emergency_write_fmt`].
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::write_fmt(::core::format_args!($($arg)*))
    };
}

/// Prints a line to the global console, as one piece; `"\n"` goes out as `"\r\n"`.
///
/// Not for exception handlers or panic reports: see [`emergency_write_fmt`].
#[macro_export]
macro_rules! println {
    () => {
        $crate::write_fmt(::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::write_fmt(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

/// Compiles the examples in README.md.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
