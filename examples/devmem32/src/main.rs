//! `devmem32 ADDRESS`: reads 32 bits of physical memory through `/dev/mem` from a 32-bit
//! (AArch32) process, and prints
//!
//! ```text
//! devmem32: 0xb000000 on CPU 2: reading
//! devmem32: 0xb000000 = 0x12345678
//! ```
//!
//! The system tests run it in the root cell on an address outside every root-cell memory
//! region: the hypervisor must turn the stage-2 fault into an external abort of the root cell,
//! which Linux delivers to the process as `SIGBUS` (exit status 135 in the shell), and the CPU
//! must go on. A 64-bit process takes the same path through different exception entries
//! (busybox `devmem`); this one checks the AArch32 ones (an abort from AArch32 EL0 is taken to
//! EL1 at the "lower EL using AArch32" vector and reports AArch32 registers, Arm ARM D1.10).
//!
//! It is a static AArch32 Linux executable without libc, built for `armv7a-none-eabi`: its
//! own `_start`, Linux EABI system calls through `svc #0` with the number in r7, no
//! allocation. On the host the program is an empty `main`, so that workspace-wide
//! `cargo clippy` and `cargo test` build it; its text handling is tested there.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// On the host only the tests use the text handling.
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

mod text;

#[cfg(target_os = "none")]
mod linux;

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
