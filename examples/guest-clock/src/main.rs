//! `guest-clock`: prints how much guest time has passed since the machine was reset, read from
//! a counter that starts at reset, as one line:
//!
//! ```text
//! cellvisor-initramfs: guest time 2.345678 s (146604875 ticks at 62500000 Hz)
//! ```
//!
//! The root cell's `/init` runs it for the `clock` action (`cellvisor.actions=clock`), and
//! `cargo xtask boot-time` compares the figure of a bare Linux boot with the one of Linux as the
//! root cell.
//!
//! It is a static Linux executable without libc, built for `aarch64-unknown-none` or
//! `x86_64-unknown-none`: its own `_start`, Linux system calls by hand, no allocation.
//!
//! - arm64 (`linux/aarch64.rs`): the generic timer's virtual counter CNTVCT_EL0 at the
//!   frequency in CNTFRQ_EL0, both of which Linux lets EL0 read (it sets CNTKCTL_EL1.EL0VCTEN,
//!   Arm ARM D11.2.2); system calls through `svc #0` (`write` = 64, `exit_group` = 94). With
//!   `-icount shift=0` (one instruction, one nanosecond) and CNTVOFF_EL2 = 0, the virtual
//!   counter counts the guest's time since reset, so the figure is reproducible.
//! - x86-64 (`linux/x86_64.rs`): the time-stamp counter (`lfence; rdtsc`), which counts from 0
//!   at reset. No register tells user space its frequency, so the program measures it: the TSC
//!   and `clock_gettime(CLOCK_MONOTONIC_RAW)` before and after a 20 ms `nanosleep`, the
//!   difference of the one over the difference of the other (see `frequency.rs`). Under QEMU
//!   both follow the machine's virtual clock, so the TSC since reset over that frequency is the
//!   guest time since reset. System calls through `syscall` (`write` = 1, `nanosleep` = 35,
//!   `clock_gettime` = 228, `exit_group` = 231).
//!
//! On the host the program is an empty `main`, so that workspace-wide `cargo clippy` and
//! `cargo test` build it; its formatting and the frequency arithmetic are tested there.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// On the host only the tests use the formatting and the arithmetic.
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

// x86-64 measures its counter's frequency; the host tests the arithmetic.
#[cfg(any(not(target_os = "none"), target_arch = "x86_64"))]
mod frequency;
mod line;

#[cfg(target_os = "none")]
mod linux;

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
