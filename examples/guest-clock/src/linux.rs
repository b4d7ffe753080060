//! The Linux side: what every architecture shares (the order of the reads, the output, the exit
//! status). The process entry, the system calls and the counter are in the architecture's
//! module, `aarch64` or `x86_64`, used here as `arch`.

use core::panic::PanicInfo;

use crate::line;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64 as arch;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as arch;

/// Standard output.
const STDOUT: u64 = 1;

/// Reads the clock, prints the line and exits; 0 if the whole line was written, else 1. The
/// architecture's `_start` calls it.
extern "C" fn main() -> ! {
    // The counter first: everything after it is not part of the measured time.
    let ticks = arch::count();
    let frequency = arch::frequency();
    let line = line::guest_time(ticks, frequency, arch::NO_FREQUENCY);
    let status = if write_all(STDOUT, line.as_bytes()) && frequency != 0 {
        0
    } else {
        1
    };
    arch::exit_group(status)
}

/// Writes all of `bytes` to `fd`, retrying short writes; false on an error.
fn write_all(fd: u64, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match usize::try_from(arch::write(fd, bytes)) {
            Ok(written) if written > 0 => bytes = &bytes[written.min(bytes.len())..],
            // 0 bytes written or -errno: give up.
            _ => return false,
        }
    }
    true
}

/// Nothing above can panic in practice (the line buffer is large enough); exit with the status
/// Rust programs use for a panic.
#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    arch::exit_group(101)
}
