//! arm64: process entry, the system calls through `svc #0` and the generic timer's virtual
//! counter.

use core::arch::{asm, global_asm};

/// `write(2)` on arm64 (include/uapi/asm-generic/unistd.h).
const SYS_WRITE: u64 = 64;
/// `exit_group(2)` on arm64.
const SYS_EXIT_GROUP: u64 = 94;

/// Why the line has no time when [`frequency`] is 0.
pub const NO_FREQUENCY: &str = "CNTFRQ_EL0 is 0";

// Linux enters a static executable at `_start` with `sp` 16-byte aligned and pointing at
// `argc`; nothing here needs the arguments. Clear the frame pointer and link register so that
// a debugger's backtrace stops here.
global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    ".type _start, %function",
    "_start:",
    "    mov x29, xzr",
    "    mov x30, xzr",
    "    bl {main}",
    "    brk #0",
    main = sym super::main,
);

/// CNTVCT_EL0, after an ISB so that the read is not hoisted before earlier instructions (Arm
/// ARM D11.2.2, "reads of CNTVCT_EL0 can occur speculatively and out of order").
pub fn count() -> u64 {
    let count: u64;
    // SAFETY: reading CNTVCT_EL0 has no side effects; Linux allows it at EL0 (EL0VCTEN), and
    // the ISB only orders instructions. No memory or stack is touched.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) count, options(nomem, nostack, preserves_flags))
    };
    count
}

/// CNTFRQ_EL0: the counter's frequency in Hz, as the firmware (here QEMU) set it.
pub fn frequency() -> u64 {
    let frequency: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects and is allowed at EL0 whenever EL0 may
    // read a counter (EL0VCTEN is set). No memory or stack is touched.
    unsafe {
        asm!("mrs {}, cntfrq_el0", out(reg) frequency, options(nomem, nostack, preserves_flags))
    };
    frequency
}

/// One `write(2)` of `bytes` to `fd`: the number of bytes written or `-errno`.
pub fn write(fd: u64, bytes: &[u8]) -> i64 {
    let result: i64;
    // SAFETY: write(2) reads `bytes.len()` bytes from `bytes.as_ptr()`, which is a live slice;
    // the kernel writes only x0 (the result), which is declared as an output.
    unsafe {
        asm!(
            "svc #0",
            in("x8") SYS_WRITE,
            inlateout("x0") fd => result,
            in("x1") bytes.as_ptr(),
            in("x2") bytes.len(),
            options(nostack, readonly, preserves_flags),
        )
    };
    result
}

/// Ends the process with `status`.
pub fn exit_group(status: u64) -> ! {
    // SAFETY: exit_group(2) does not return and touches none of this process's memory.
    unsafe {
        asm!(
            "svc #0",
            in("x8") SYS_EXIT_GROUP,
            in("x0") status,
            options(noreturn, nostack),
        )
    }
}
