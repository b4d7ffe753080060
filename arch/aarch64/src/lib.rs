//! # cellvisor-aarch64
//!
//! The AArch64 half of cellvisor that knows the architecture but no board: EL2 entry with
//! the Linux arm64 Image header, per-CPU stacks, EL2 exception vectors with decoded fault
//! reports, the hypervisor's own EL2 stage-1 map (built with `cellvisor-paging`), MMU and
//! caches, and secondary CPU start through firmware PSCI CPU_ON.
//!
//! A board crate describes the board with [`board::Board`], registers it with [`board!`]
//! and links with the `cellvisor-aarch64.ld` script this crate provides (see its README).
//!
//! The logic that needs no CPU ([`esr`], [`memmap`], [`board`](mod@board)) builds and is
//! tested on any host; the code that runs on the CPU lives in `hw`, built for AArch64 only.
//! The root cell's device tree is derived from the stock one by `cellvisor-devicetree`, with
//! the root cell's CPUs given by MPIDR affinity ([`board::MPIDR_AFFINITY_MASK`]).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

pub mod board;
pub mod esr;
pub mod memmap;
pub mod psci;
pub mod trap;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod hw;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod panic;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use hw::{cpu_index, park, print, report};

/// Registers the board description of the image: `cellvisor_aarch64::board!(Board { .. });`
/// in the board crate's `main.rs`.
#[macro_export]
macro_rules! board {
    ($board:expr) => {
        /// The board description the architecture code reads at boot.
        #[unsafe(no_mangle)]
        static CELLVISOR_BOARD: $crate::board::Board = $board;
    };
}
