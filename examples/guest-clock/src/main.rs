//! `guest-clock`: prints how much guest time has passed since the machine was reset, read from
//! the generic timer's virtual counter, as one line:
//!
//! ```text
//! cellvisor-initramfs: guest time 2.345678 s (146604875 ticks at 62500000 Hz)
//! ```
//!
//! The root cell's `/init` runs it for the `clock` action (`cellvisor.actions=clock`), and
//! `cargo xtask boot-time` compares the figure of a bare Linux boot with the one of Linux as the
//! root cell. With `-icount shift=0` (one instruction, one nanosecond) and CNTVOFF_EL2 = 0, the
//! virtual counter counts the guest's time since reset, so the figure is reproducible.
//!
//! It is a static aarch64 Linux executable without libc, built for `aarch64-unknown-none`:
//! its own `_start`, Linux system calls through `svc #0` (`write` = 64, `exit_group` = 94), no
//! allocation. Linux lets EL0 read CNTVCT_EL0 and CNTFRQ_EL0 (it sets CNTKCTL_EL1.EL0VCTEN,
//! Arm ARM D11.2.2). On the host the program is an empty `main`, so that workspace-wide
//! `cargo clippy` and `cargo test` build it; its formatting is tested there.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// On the host only the tests use the formatting.
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

mod line;

#[cfg(target_os = "none")]
mod linux;

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
