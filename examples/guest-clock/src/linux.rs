//! The Linux side: process entry, the two system calls and the counter reads.

use core::arch::{asm, global_asm};
use core::panic::PanicInfo;

use crate::line;

/// `write(2)` on arm64 (include/uapi/asm-generic/unistd.h).
const SYS_WRITE: u64 = 64;
/// `exit_group(2)` on arm64.
const SYS_EXIT_GROUP: u64 = 94;
/// Standard output.
const STDOUT: u64 = 1;

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
    main = sym main,
);

/// Reads the clock, prints the line and exits; 0 if the whole line was written, else 1.
extern "C" fn main() -> ! {
    // The counter first: everything after it is not part of the measured time.
    let ticks = virtual_count();
    let frequency = counter_frequency();
    let line = line::guest_time(ticks, frequency);
    let status = if write_all(STDOUT, line.as_bytes()) && frequency != 0 {
        0
    } else {
        1
    };
    exit_group(status)
}

/// CNTVCT_EL0, after an ISB so that the read is not hoisted before earlier instructions (Arm
/// ARM D11.2.2, "reads of CNTVCT_EL0 can occur speculatively and out of order").
fn virtual_count() -> u64 {
    let count: u64;
    // SAFETY: reading CNTVCT_EL0 has no side effects; Linux allows it at EL0 (EL0VCTEN), and
    // the ISB only orders instructions. No memory or stack is touched.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) count, options(nomem, nostack, preserves_flags))
    };
    count
}

/// CNTFRQ_EL0: the counter's frequency in Hz, as the firmware (here QEMU) set it.
fn counter_frequency() -> u64 {
    let frequency: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects and is allowed at EL0 whenever EL0 may
    // read a counter (EL0VCTEN is set). No memory or stack is touched.
    unsafe {
        asm!("mrs {}, cntfrq_el0", out(reg) frequency, options(nomem, nostack, preserves_flags))
    };
    frequency
}

/// Writes all of `bytes` to `fd`, retrying short writes; false on an error.
fn write_all(fd: u64, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        let result: i64;
        // SAFETY: write(2) reads `bytes.len()` bytes from `bytes.as_ptr()`, which is a live
        // slice; the kernel writes only x0 (the result), which is declared as an output.
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
        match usize::try_from(result) {
            Ok(written) if written > 0 => bytes = &bytes[written.min(bytes.len())..],
            // 0 bytes written or -errno: give up.
            _ => return false,
        }
    }
    true
}

/// Ends the process with `status`.
fn exit_group(status: u64) -> ! {
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

/// Nothing above can panic in practice (the line buffer is large enough); exit with the status
/// Rust programs use for a panic.
#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    exit_group(101)
}
