//! Starting the application processors: INIT, then two start-up IPIs with a real-mode
//! trampoline copied below 1 MiB (Intel SDM Vol. 3A §9.4.4.1 and §10.6, "MP initialization";
//! the trampoline follows §9.9 to protected mode and §9.8.5 to long mode).
//!
//! The trampoline lives at [`TRAMPOLINE`] (SIPI vector 0x08). It loads its own GDT, turns on
//! protected mode, PAE, long mode and paging with the boot CPU's tables, and jumps to
//! `ap_entry` with the CPU's index and its stack, both written into the trampoline's data
//! before each start. The CPUs are started one after the other.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

/// Where the trampoline runs: below 1 MiB, 4 KiB aligned; the SIPI vector is its page number.
pub const TRAMPOLINE: u64 = 0x8000;
/// The local APIC's registers (xAPIC, the reset base; the boot map makes the page uncached).
const LOCAL_APIC: u64 = 0xfee0_0000;
const APIC_ID: u64 = 0x020;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
/// ICR: INIT, level assert; start-up; delivery status (bit 12, "send pending").
const ICR_INIT: u32 = 0b101 << 8 | 1 << 14;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_PENDING: u32 = 1 << 12;

/// Each application processor's stack: as large as the boot CPU's, for the management
/// commands it may run for the root cell (16 KiB overflowed into the next CPU's).
const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

/// Stacks of CPUs 1 and up.
static mut STACKS: [Stack; crate::firmware::MAX_CPUS] =
    [const { Stack([0; STACK_SIZE]) }; crate::firmware::MAX_CPUS];

/// How many application processors reached Rust.
static STARTED: AtomicU32 = AtomicU32::new(0);

global_asm!(
    r#"
    .section .rodata.trampoline, "a"
    .balign 16
    .global cellvisor_trampoline_start
    .global cellvisor_trampoline_end
    .global cellvisor_trampoline_cr3
    .global cellvisor_trampoline_stack
    .global cellvisor_trampoline_cpu
    .global cellvisor_trampoline_entry
cellvisor_trampoline_start:
    .code16
    cli
    xor ax, ax
    mov ds, ax
    lgdt [TR_GDTR]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    // ljmp 0x08:tr_protected (with a 32-bit offset).
    .byte 0x66, 0xea
    .long {base} + (tr_protected - cellvisor_trampoline_start)
    .word 0x08

    .code32
tr_protected:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, dword ptr [TR_CR3]
    mov cr3, eax
    // EFER.LME, and EFER.NXE: the nested page tables' NX bit (regions without "execute")
    // is reserved, and every access through it faults, unless the host's NXE is set.
    mov ecx, 0xc0000080
    rdmsr
    or eax, 1 << 8 | 1 << 11
    wrmsr
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    // ljmp 0x18:tr_long.
    .byte 0xea
    .long {base} + (tr_long - cellvisor_trampoline_start)
    .word 0x18

    .code64
tr_long:
    // The hypervisor's own GDT (the boot CPU's, in the image: this page becomes the root
    // cell's), and CS reloaded from it by a far return into the image, on the CPU's stack.
    mov rsp, qword ptr [TR_STACK]
    mov rax, offset cellvisor_boot_gdtr
    lgdt [rax]
    push 0x08
    mov rax, offset cellvisor_ap_long
    push rax
    retfq

    .balign 8
tr_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
tr_gdtr:
    .word 4 * 8 - 1
    .long {base} + (tr_gdt - cellvisor_trampoline_start)
    .balign 8
cellvisor_trampoline_cr3:
    .quad 0
cellvisor_trampoline_stack:
    .quad 0
cellvisor_trampoline_cpu:
    .quad 0
cellvisor_trampoline_entry:
    .quad 0
cellvisor_trampoline_end:
    .code64
    // Where the trampoline's data is once copied to {base}.
    .set TR_GDTR, {base} + (tr_gdtr - cellvisor_trampoline_start)
    .set TR_CR3, {base} + (cellvisor_trampoline_cr3 - cellvisor_trampoline_start)
    .set TR_STACK, {base} + (cellvisor_trampoline_stack - cellvisor_trampoline_start)
    .set TR_CPU, {base} + (cellvisor_trampoline_cpu - cellvisor_trampoline_start)
    .set TR_ENTRY, {base} + (cellvisor_trampoline_entry - cellvisor_trampoline_start)
"#,
    base = const TRAMPOLINE,
);

global_asm!(
    r#"
    .section .text.ap, "ax"
    .global cellvisor_ap_long
cellvisor_ap_long:
    call cellvisor_flat_segments
    mov rdi, qword ptr [TR_CPU]
    mov rax, qword ptr [TR_ENTRY]
    jmp rax
"#
);

unsafe extern "C" {
    static cellvisor_trampoline_start: u8;
    static cellvisor_trampoline_end: u8;
    static cellvisor_trampoline_cr3: u8;
    static cellvisor_trampoline_stack: u8;
    static cellvisor_trampoline_cpu: u8;
    static cellvisor_trampoline_entry: u8;
    static cellvisor_boot_pml4: u8;
}

/// The running CPU's local APIC ID (xAPIC).
pub fn apic_id() -> u32 {
    read(APIC_ID) >> 24
}

fn read(register: u64) -> u32 {
    // SAFETY: the local APIC's page, mapped uncached one to one; reading has no side effect
    // for the registers read here.
    unsafe { ((LOCAL_APIC + register) as *const u32).read_volatile() }
}

fn write(register: u64, value: u32) {
    // SAFETY: the local APIC's page; the ICR writes send IPIs to CPUs the caller starts.
    unsafe { ((LOCAL_APIC + register) as *mut u32).write_volatile(value) }
}

/// Sends one IPI to APIC ID `apic_id` and waits until the APIC has sent it.
fn send(apic_id: u32, low: u32) {
    write(ICR_HIGH, apic_id << 24);
    write(ICR_LOW, low);
    for _ in 0..1_000_000 {
        if read(ICR_LOW) & ICR_PENDING == 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Waits roughly `micros` microseconds: the pause loop is no clock, but the SDM's delays
/// are minimums and QEMU needs none. A calibrated timer comes with the rest of the backend.
fn delay(micros: u64) {
    for _ in 0..micros * 100 {
        core::hint::spin_loop();
    }
}

/// The value of a trampoline data field's offset.
fn field(symbol: &u8) -> *mut u64 {
    // SAFETY (address only): the symbols are in the trampoline's image, copied to TRAMPOLINE.
    let offset = symbol as *const u8 as u64 - (&raw const cellvisor_trampoline_start) as u64;
    (TRAMPOLINE + offset) as *mut u64
}

/// Starts the CPUs with `apic_ids` (the boot CPU's left out) as CPUs 1, 2, ..., each running
/// `entry(cpu)`; returns how many reached Rust.
pub fn start(apic_ids: &[u32], entry: extern "C" fn(u64) -> !) -> u32 {
    let start = &raw const cellvisor_trampoline_start;
    let end = &raw const cellvisor_trampoline_end;
    let len = end as usize - start as usize;
    // SAFETY: the trampoline page below 1 MiB is conventional memory nothing else uses (the
    // Multiboot information QEMU writes starts at 0x9000 and up); the boot tables' root is
    // below 4 GiB.
    unsafe {
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
        field(&cellvisor_trampoline_cr3).write_volatile((&raw const cellvisor_boot_pml4) as u64);
        field(&cellvisor_trampoline_entry).write_volatile(entry as usize as u64);
    }
    let boot = apic_id();
    let mut cpu = 0u64;
    for &id in apic_ids.iter().filter(|&&id| id != boot) {
        cpu += 1;
        let Some(stack) = (cpu as usize)
            .checked_sub(1)
            .filter(|&i| i < crate::firmware::MAX_CPUS)
        else {
            break;
        };
        let before = STARTED.load(Ordering::Acquire);
        // SAFETY: each stack is handed to one CPU once; the trampoline reads these fields
        // before the next CPU is started (we wait for it below).
        unsafe {
            let top = (&raw mut STACKS[stack]) as u64 + STACK_SIZE as u64;
            field(&cellvisor_trampoline_stack).write_volatile(top);
            field(&cellvisor_trampoline_cpu).write_volatile(cpu);
        }
        send(id, ICR_INIT);
        delay(10_000);
        for _ in 0..2 {
            send(id, ICR_STARTUP | (TRAMPOLINE >> 12) as u32);
            delay(200);
        }
        for _ in 0..100_000_000u64 {
            if STARTED.load(Ordering::Acquire) != before {
                break;
            }
            core::hint::spin_loop();
        }
    }
    STARTED.load(Ordering::Acquire)
}

/// What the lowest word of every stack holds while nothing overflowed it.
const STACK_CANARY: u64 = 0x5354_4143_4b5f_4f4b;

unsafe extern "C" {
    /// The boot CPU's stack (linker script): only its address is used.
    static __boot_stack_bottom: u8;
}

/// The lowest word of CPU `cpu`'s stack (0: the boot CPU's).
fn stack_bottom(cpu: usize) -> Option<*mut u64> {
    if cpu == 0 {
        return Some((&raw const __boot_stack_bottom).cast_mut().cast());
    }
    // Only an address is computed; nothing is read or written here.
    let stacks = (&raw mut STACKS).cast::<Stack>();
    (cpu - 1 < crate::firmware::MAX_CPUS).then(|| stacks.wrapping_add(cpu - 1).cast::<u64>())
}

/// Marks the bottom of CPU `cpu`'s stack (on that CPU, early: far from the bottom).
pub fn mark_stack(cpu: usize) {
    if let Some(bottom) = stack_bottom(cpu) {
        // SAFETY: the lowest word of this CPU's own stack, which it has not reached.
        unsafe { bottom.write_volatile(STACK_CANARY) };
    }
}

/// Whether CPU `cpu`'s stack overflowed since [`mark_stack`] (the canary is gone; the
/// memory below it may be damaged).
pub fn stack_overflowed(cpu: usize) -> bool {
    // SAFETY: the lowest word of a stack of the image, read only.
    stack_bottom(cpu).is_some_and(|bottom| unsafe { bottom.read_volatile() } != STACK_CANARY)
}

/// Called by each application processor once it runs Rust.
pub fn started() {
    STARTED.fetch_add(1, Ordering::Release);
}
