//! x86-64: process entry, the system calls through `syscall` and the time-stamp counter.
//!
//! The TSC counts from 0 at reset (SDM Vol. 3B, "Time-Stamp Counter"), but no register tells
//! user space its frequency (CPUID leaf 0x15 is often absent or incomplete, and QEMU's TSC
//! follows its own clock anyway). [`frequency`] measures it instead: it reads the TSC and
//! `CLOCK_MONOTONIC_RAW` before and after a 20 ms `nanosleep` and divides. Under QEMU both
//! follow the machine's virtual clock (Linux's clock source, the TSC itself or the HPET, is
//! emulated from it), so the TSC since reset divided by that frequency is the guest time since
//! reset, as long as nothing offsets the guest's TSC.

use core::arch::{asm, global_asm};
use core::ptr;

use crate::frequency::{self, Sample};

/// `write(2)` on x86-64 (arch/x86/entry/syscalls/syscall_64.tbl).
const SYS_WRITE: u64 = 1;
/// `nanosleep(2)` on x86-64.
const SYS_NANOSLEEP: u64 = 35;
/// `clock_gettime(2)` on x86-64.
const SYS_CLOCK_GETTIME: u64 = 228;
/// `exit_group(2)` on x86-64.
const SYS_EXIT_GROUP: u64 = 231;
/// The clock the TSC is measured against: monotonic and not slewed by NTP
/// (include/uapi/linux/time.h).
const CLOCK_MONOTONIC_RAW: u64 = 4;
/// How long the measurement sleeps: long enough that the time the system calls take around it
/// is small against it, short enough not to delay the boot measurements noticeably.
const MEASUREMENT: Timespec = Timespec {
    seconds: 0,
    nanoseconds: 20_000_000,
};

/// Why the line has no time when [`frequency`] is 0.
pub const NO_FREQUENCY: &str = "the TSC frequency could not be measured";

/// `struct __kernel_timespec` (include/uapi/linux/time_types.h), what the 64-bit system calls
/// take.
#[repr(C)]
struct Timespec {
    seconds: i64,
    nanoseconds: i64,
}

// Linux enters a static executable at `_start` with `rsp` 16-byte aligned and pointing at
// `argc` (System V x86-64 psABI 3.4.1); nothing here needs the arguments. The `call` leaves
// `rsp` as a function expects it (8 below a multiple of 16); clearing the frame pointer makes a
// debugger's backtrace stop here.
global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    ".type _start, @function",
    "_start:",
    "    xor ebp, ebp",
    "    call {main}",
    "    ud2",
    main = sym super::main,
);

/// The TSC, after an LFENCE so that RDTSC does not run before earlier instructions have (SDM
/// Vol. 2B, "RDTSC": "If software requires RDTSC to be executed only after all previous
/// instructions have executed ..., it can execute LFENCE immediately before RDTSC").
pub fn count() -> u64 {
    let low: u32;
    let high: u32;
    // SAFETY: RDTSC only reads the TSC; Linux allows it at CPL 3 (CR4.TSD clear) unless the
    // process asked otherwise through prctl(PR_SET_TSC), which this one does not. LFENCE only
    // orders instructions. No memory or stack is touched.
    unsafe {
        asm!(
            "lfence",
            "rdtsc",
            out("eax") low,
            out("edx") high,
            options(nomem, nostack, preserves_flags),
        )
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// The TSC's frequency in Hz, measured against `CLOCK_MONOTONIC_RAW` over a 20 ms sleep; 0 if
/// the clock cannot be read.
pub fn frequency() -> u64 {
    let Some(start) = sample() else {
        return 0;
    };
    // Waking early (a signal) only shortens the measurement: the clock says how long it was.
    nanosleep(&MEASUREMENT);
    let Some(end) = sample() else {
        return 0;
    };
    frequency::between(start, end)
}

/// The TSC and `CLOCK_MONOTONIC_RAW` at (about) the same moment; `None` if the clock cannot be
/// read.
fn sample() -> Option<Sample> {
    let before = count();
    let nanoseconds = monotonic_raw()?;
    let after = count();
    Some(Sample::bracketed(before, nanoseconds, after))
}

/// `CLOCK_MONOTONIC_RAW` in nanoseconds, by the system call (there is no vDSO lookup here).
fn monotonic_raw() -> Option<u64> {
    let mut time = Timespec {
        seconds: 0,
        nanoseconds: 0,
    };
    let result: i64;
    // SAFETY: clock_gettime(2) writes one `struct __kernel_timespec` at the pointer, which is
    // `time`, a live local of that layout borrowed mutably for the call. The kernel writes only
    // rax (the result), rcx and r11 (the return address and RFLAGS, SDM Vol. 2B "SYSCALL"),
    // all declared.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_CLOCK_GETTIME => result,
            in("rdi") CLOCK_MONOTONIC_RAW,
            in("rsi") ptr::from_mut(&mut time),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        )
    };
    if result != 0 {
        return None;
    }
    Sample::nanoseconds(time.seconds, time.nanoseconds)
}

/// Sleeps for `duration` unless a signal interrupts it.
fn nanosleep(duration: &Timespec) {
    let _result: i64;
    // SAFETY: nanosleep(2) reads one `struct __kernel_timespec` from `duration`, a live
    // reference, and writes nothing with a null `rem`. The kernel writes only rax, rcx and r11,
    // all declared.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_NANOSLEEP => _result,
            in("rdi") ptr::from_ref(duration),
            in("rsi") 0_u64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack, readonly),
        )
    };
}

/// One `write(2)` of `bytes` to `fd`: the number of bytes written or `-errno`.
pub fn write(fd: u64, bytes: &[u8]) -> i64 {
    let result: i64;
    // SAFETY: write(2) reads `bytes.len()` bytes from `bytes.as_ptr()`, which is a live slice.
    // The kernel writes only rax (the result), rcx and r11, all declared.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_WRITE => result,
            in("rdi") fd,
            in("rsi") bytes.as_ptr(),
            in("rdx") bytes.len(),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack, readonly),
        )
    };
    result
}

/// Ends the process with `status`.
pub fn exit_group(status: u64) -> ! {
    // SAFETY: exit_group(2) does not return and touches none of this process's memory.
    unsafe {
        asm!(
            "syscall",
            in("rax") SYS_EXIT_GROUP,
            in("rdi") status,
            options(noreturn, nostack),
        )
    }
}
