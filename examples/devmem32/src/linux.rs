//! The Linux side: process entry, the system calls (32-bit Arm EABI: number in r7, arguments
//! in r0-r5, result in r0; numbers from the kernel's arch/arm/tools/syscall.tbl) and the load.

use core::arch::{asm, global_asm};
use core::panic::PanicInfo;

use crate::text::{parse_address, Line};

/// `write(2)`.
const SYS_WRITE: u32 = 4;
/// `open(2)`.
const SYS_OPEN: u32 = 5;
/// `mmap2(2)`: the offset counts 4096-byte units.
const SYS_MMAP2: u32 = 192;
/// `exit_group(2)`.
const SYS_EXIT_GROUP: u32 = 248;
/// `getcpu(2)`.
const SYS_GETCPU: u32 = 345;

/// `open` flags: read and write, and `O_SYNC`, which makes Linux map `/dev/mem` uncached
/// (asm-generic/fcntl.h: `__O_SYNC | O_DSYNC`).
const O_RDWR: u32 = 2;
const O_SYNC: u32 = 0o4_010_000;
/// `mmap2` protection and flags.
const PROT_READ: u32 = 1;
const MAP_SHARED: u32 = 1;
/// The unit of `mmap2`'s offset, and the page mapped.
const PAGE: u64 = 4096;

const STDOUT: u32 = 1;
const STDERR: u32 = 2;

/// The device of physical memory, NUL-terminated.
const DEV_MEM: &[u8] = b"/dev/mem\0";

// Linux enters a static executable at `_start` in A32 state with `sp` pointing at `argc`, the
// argument pointers after it. Clear the frame pointer and link register so that a debugger's
// backtrace stops here.
global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    ".type _start, %function",
    ".arm",
    "_start:",
    "    mov r11, #0",
    "    mov lr, #0",
    "    mov r0, sp",
    "    bl {main}",
    "    udf #0",
    main = sym main,
);

/// A system call with up to six arguments.
///
/// # Safety
/// The arguments must be valid for `number` as the kernel reads them (pointers to live memory
/// of the sizes the call expects); the kernel writes only r0 and the memory the call writes.
unsafe fn syscall(number: u32, args: [u32; 6]) -> i32 {
    let result: i32;
    // SAFETY: the caller vouches for the arguments; `svc #0` clobbers only r0 (declared).
    unsafe {
        asm!(
            "svc #0",
            in("r7") number,
            inlateout("r0") args[0] => result,
            in("r1") args[1],
            in("r2") args[2],
            in("r3") args[3],
            in("r4") args[4],
            in("r5") args[5],
            options(nostack),
        )
    };
    result
}

/// Writes all of `bytes` to `fd` (gives up on an error).
fn write_all(fd: u32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: write(2) reads `bytes.len()` bytes of the live slice `bytes`.
        let written = unsafe {
            syscall(
                SYS_WRITE,
                [fd, bytes.as_ptr() as u32, bytes.len() as u32, 0, 0, 0],
            )
        };
        match usize::try_from(written) {
            Ok(written) if written > 0 => bytes = &bytes[written.min(bytes.len())..],
            _ => return,
        }
    }
}

/// Ends the process with `status`.
fn exit_group(status: u32) -> ! {
    // SAFETY: exit_group(2) does not return and reads no memory of this process.
    unsafe { syscall(SYS_EXIT_GROUP, [status, 0, 0, 0, 0, 0]) };
    // Not reached; keeps the type `!` without another asm block.
    loop {
        core::hint::spin_loop();
    }
}

/// Prints `message` on standard error and exits with `status`.
fn fail(message: &mut Line, status: u32) -> ! {
    write_all(STDERR, message.text("\n").as_bytes());
    exit_group(status)
}

/// The CPU this process runs on (`u32::MAX` if the kernel does not say).
fn current_cpu() -> u32 {
    let mut cpu: u32 = u32::MAX;
    // SAFETY: getcpu(2) writes one u32 to `cpu`, a live local; the node pointer is NULL.
    let result = unsafe { syscall(SYS_GETCPU, [&raw mut cpu as u32, 0, 0, 0, 0, 0]) };
    if result == 0 {
        cpu
    } else {
        u32::MAX
    }
}

/// The argument at `stack` (Linux's initial stack): `devmem32 ADDRESS`.
fn address_argument(stack: *const u32) -> Option<u64> {
    // SAFETY: Linux's initial stack holds argc, then argc pointers to NUL-terminated strings,
    // then a NULL pointer; only what argc says exists is read.
    unsafe {
        if stack.read() != 2 {
            return None;
        }
        let argument = stack.add(2).read() as *const u8;
        let mut len = 0;
        while len < 64 && argument.add(len).read() != 0 {
            len += 1;
        }
        parse_address(core::slice::from_raw_parts(argument, len))
    }
}

/// Maps the page of the address, prints what it is about to do, reads 32 bits and prints
/// them: exit status 0; 2 for a bad argument, 1 if `/dev/mem` cannot be opened or mapped.
extern "C" fn main(stack: *const u32) -> ! {
    let Some(address) = address_argument(stack) else {
        fail(
            Line::new().text("usage: devmem32 ADDRESS (decimal or 0x hexadecimal, 4-byte aligned)"),
            2,
        )
    };
    let Ok(page) = u32::try_from(address / PAGE) else {
        fail(
            Line::new().text("devmem32: address beyond mmap2's reach"),
            2,
        )
    };
    if address % 4 != 0 {
        fail(
            Line::new().text("devmem32: the address is not 4-byte aligned"),
            2,
        )
    }
    // SAFETY: open(2) reads the NUL-terminated path, a static.
    let fd = unsafe {
        syscall(
            SYS_OPEN,
            [DEV_MEM.as_ptr() as u32, O_RDWR | O_SYNC, 0, 0, 0, 0],
        )
    };
    let Ok(fd) = u32::try_from(fd) else {
        fail(
            Line::new()
                .text("devmem32: cannot open /dev/mem: error ")
                .decimal(fd.unsigned_abs()),
            1,
        )
    };
    // SAFETY: a new shared read-only mapping chosen by the kernel (NULL hint) replaces
    // nothing of this process.
    let mapped =
        unsafe { syscall(SYS_MMAP2, [0, PAGE as u32, PROT_READ, MAP_SHARED, fd, page]) } as u32;
    // mmap2 returns -errno (the last 4095 values) on failure.
    if mapped > u32::MAX - 4095 {
        fail(
            Line::new()
                .text("devmem32: cannot map ")
                .hex(address)
                .text(": error ")
                .decimal(mapped.wrapping_neg()),
            1,
        )
    }
    write_all(
        STDOUT,
        Line::new()
            .text("devmem32: ")
            .hex(address)
            .text(" on CPU ")
            .decimal(current_cpu())
            .text(": reading\n")
            .as_bytes(),
    );
    let pointer = (mapped + (address % PAGE) as u32) as *const u32;
    // SAFETY: `pointer` lies in the page just mapped (4-byte aligned, checked above); a fault
    // of the load ends the process with SIGBUS, which is what is being tested.
    let value = unsafe { pointer.read_volatile() };
    write_all(
        STDOUT,
        Line::new()
            .text("devmem32: ")
            .hex(address)
            .text(" = ")
            .hex(u64::from(value))
            .text("\n")
            .as_bytes(),
    );
    exit_group(0)
}

/// Nothing above panics in practice; exit with the status Rust programs use for a panic.
#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    exit_group(101)
}
