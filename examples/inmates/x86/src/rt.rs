//! The runtime of the x86 inmates: the entry from 32-bit protected mode into long mode, the
//! console on COM2, the local APIC and its timer, and the communication region.
//!
//! The hypervisor enters the image's first byte in 32-bit protected mode with flat segments
//! and no GDT, IDT or paging of the inmate's. `_start` clears `.bss`, loads a GDT, maps the
//! first 4 GiB one to one with 2 MiB pages (RAM, the communication region at 2 GiB and the
//! local APIC's page, which traps), turns on PAE, `EFER.LME` (an `EFER` write the hypervisor
//! emulates) and paging, and jumps to 64-bit code, which calls `inmate_main`.

use core::arch::{asm, global_asm};
use core::fmt;

use cellvisor_abi::comm;

global_asm!(
    r#"
    .section .text.entry, "ax"
    .code32
    .global _start
_start:
    cld
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    shr ecx, 2
    xor eax, eax
    rep stosd
    lgdt [inmate_gdt_pointer]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, offset __stack_top
    // PML4[0] -> PDPT; PDPT[0..4] -> PD 0..3; each PD maps 1 GiB with 2 MiB pages.
    mov eax, offset inmate_pdpt
    or eax, 3
    mov dword ptr [inmate_pml4], eax
    mov ecx, 0
2:
    mov eax, ecx
    shl eax, 12
    add eax, offset inmate_pd
    or eax, 3
    mov dword ptr [inmate_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jb 2b
    mov ecx, 0
3:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [inmate_pd + ecx * 8], eax
    // Bits 32 and up of the 2 MiB page's address: ecx / 2048 GiB, always 0 below 4 GiB.
    mov dword ptr [inmate_pd + ecx * 8 + 4], 0
    inc ecx
    cmp ecx, 2048
    jb 3b
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, offset inmate_pml4
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    // A far jump to the 64-bit code segment: ljmp 0x08:inmate_long_mode.
    .byte 0xea
    .long inmate_long_mode
    .word 0x08

    .code64
inmate_long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, offset __stack_top
    call inmate_main
4:
    cli
    hlt
    jmp 4b

    // Interrupts: counted, and ended at the local APIC.
    .balign 16
    .global inmate_irq
inmate_irq:
    lock inc qword ptr [rip + inmate_irq_count]
    push rax
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq

    // The timer's interrupt: its TSC at entry passed to `inmate_timer` (Rust), which may
    // arm the next deadline; ended at the local APIC. The caller-saved registers are kept
    // (no SSE: the target is soft-float).
    .balign 16
    .global inmate_timer_irq
inmate_timer_irq:
    push rax
    push rdx
    push rcx
    rdtsc
    shl rdx, 32
    or rax, rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov rdi, rax
    mov rax, qword ptr [rip + inmate_timer_handler]
    test rax, rax
    jz 5f
    call rax
5:
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rcx
    pop rdx
    pop rax
    iretq

    // An exception: the inmate stops here, interrupts off.
    .balign 16
    .global inmate_exception
inmate_exception:
    cli
    hlt
    jmp inmate_exception

    .section .rodata
    .balign 16
inmate_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
inmate_gdt_pointer:
    .word 23
    .long inmate_gdt

    .section .bss.tables, "aw", @nobits
    .balign 4096
    .global inmate_pml4
inmate_pml4:
    .skip 4096
inmate_pdpt:
    .skip 4096
inmate_pd:
    .skip 4 * 4096
"#
);

extern "C" {
    fn inmate_irq();
    fn inmate_timer_irq();
    fn inmate_exception();
}

/// What the timer's interrupt calls with the TSC at its entry (0: nothing), set by
/// [`set_timer_handler`].
#[export_name = "inmate_timer_handler"]
static TIMER_HANDLER: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Makes the timer's interrupt call `handler` with the TSC at the interrupt's entry.
pub fn set_timer_handler(handler: extern "C" fn(u64)) {
    TIMER_HANDLER.store(handler as usize, core::sync::atomic::Ordering::Release);
}

/// Interrupts other than the timer's taken so far.
#[export_name = "inmate_irq_count"]
static IRQ_COUNT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Interrupts other than the timer's taken so far.
pub fn irq_count() -> u64 {
    IRQ_COUNT.load(core::sync::atomic::Ordering::Relaxed)
}

/// The IOAPIC's register page (q35).
const IOAPIC: u64 = 0xfec0_0000;

/// Writes IOAPIC register `index` (through the index register and the window; each access
/// traps and is decided by the hypervisor).
pub fn ioapic_write(index: u32, value: u32) {
    // SAFETY: the IOAPIC's page, mapped by `_start`; plain MOVs, see `apic_read`.
    unsafe {
        asm!("mov dword ptr [{at}], {value:e}", at = in(reg) IOAPIC, value = in(reg) index,
             options(nostack));
        asm!("mov dword ptr [{at}], {value:e}", at = in(reg) IOAPIC + 0x10, value = in(reg) value,
             options(nostack));
    }
}

/// Routes IOAPIC pin `pin` to `vector` on the CPU with APIC ID `apic_id`: fixed, physical,
/// edge-triggered, active high, unmasked.
pub fn route_pin(pin: u32, vector: u8, apic_id: u32) {
    ioapic_write(0x11 + 2 * pin, apic_id << 24);
    ioapic_write(0x10 + 2 * pin, u32::from(vector));
}

/// Enables COM2's transmitter-empty interrupt (IER bit 1) and its OUT2 gate (MCR bit 3, which
/// connects the 16550's interrupt line on a PC).
pub fn com2_enable_tx_interrupt() {
    outb(COM2 + 4, 0x0b);
    outb(COM2 + 1, 0x02);
}

/// COM2, the demo cell's 16550.
const COM2: u16 = 0x2f8;
/// Where the hypervisor maps the communication region (`config/demo.toml`).
pub const COMM_REGION: u64 = 0x8000_0000;
/// The local APIC's page (it traps; the hypervisor lets the cell have its own CPU's).
const LOCAL_APIC: u64 = 0xfee0_0000;
/// The timer's interrupt vector.
const TIMER_VECTOR: u8 = 0x20;

fn outb(port: u16, value: u8) {
    // SAFETY: a port of the cell's (COM2); no memory effect.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack)) };
    value
}

/// The console: COM2 at 115200 baud, 8N1, polled.
#[derive(Debug)]
pub struct Console;

impl Console {
    /// Programs the UART.
    pub fn init() -> Self {
        outb(COM2 + 1, 0);
        outb(COM2 + 3, 0x80);
        outb(COM2, 1);
        outb(COM2 + 1, 0);
        outb(COM2 + 3, 3);
        outb(COM2 + 2, 7);
        outb(COM2 + 4, 3);
        Console
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.write_str("\r")?;
            }
            let mut spins = 0;
            while inb(COM2 + 5) & 0x20 == 0 && spins < 100_000 {
                spins += 1;
            }
            outb(COM2, byte);
        }
        Ok(())
    }
}

/// A local APIC register. A plain `MOV` in assembly: the access traps, and the hypervisor
/// decodes only the `MOV` forms (a volatile read in Rust may become part of another
/// instruction, such as a `SUB` with a memory operand).
pub fn apic_read(offset: u64) -> u32 {
    let value: u32;
    // SAFETY: the local APIC's page, mapped by `_start` (the access traps and is emulated).
    unsafe {
        asm!("mov {value:e}, dword ptr [{at}]", at = in(reg) LOCAL_APIC + offset,
             value = out(reg) value, options(nostack, readonly))
    };
    value
}

/// Writes a local APIC register (a plain `MOV`, see [`apic_read`]).
pub fn apic_write(offset: u64, value: u32) {
    // SAFETY: as for `apic_read`.
    unsafe {
        asm!("mov dword ptr [{at}], {value:e}", at = in(reg) LOCAL_APIC + offset,
             value = in(reg) value, options(nostack))
    };
}

/// One IDT entry (64-bit interrupt gate).
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    low: u64,
    high: u64,
}

static mut IDT: [Gate; 256] = [Gate { low: 0, high: 0 }; 256];

/// An interrupt gate to `handler` in the 64-bit code segment.
const fn gate(handler: u64) -> Gate {
    Gate {
        low: (handler & 0xffff) | 0x08 << 16 | 0x8e << 40 | ((handler >> 16) & 0xffff) << 48,
        high: handler >> 32,
    }
}

/// Points IDT entry `vector` at `handler` (after [`load_idt`], before the interrupt can
/// come).
pub fn set_gate(vector: u8, handler: u64) {
    let idt = &raw mut IDT;
    // SAFETY: an aligned entry of the IDT; the caller's CPU cannot take this vector yet.
    unsafe { (*idt)[usize::from(vector)] = gate(handler) };
}

/// Loads the IDT [`load_idt`] filled on this CPU too.
pub fn use_idt() {
    let idt = &raw mut IDT;
    let pointer = [
        (256 * 16 - 1) as u64 | (idt as u64) << 16,
        (idt as u64) >> 48,
    ];
    // SAFETY: the pointer names the IDT above, which lives as long as the inmate.
    unsafe { asm!("lidt [{}]", in(reg) pointer.as_ptr(), options(nostack)) };
}

/// Loads an IDT: exceptions stop the inmate, every interrupt is ended at the local APIC.
pub fn load_idt() {
    let idt = &raw mut IDT;
    for vector in 0..256 {
        let handler = if vector < 32 {
            inmate_exception as *const () as u64
        } else if vector == usize::from(TIMER_VECTOR) {
            inmate_timer_irq as *const () as u64
        } else {
            inmate_irq as *const () as u64
        };
        // SAFETY: one CPU, before interrupts are enabled; the IDT is ours.
        unsafe { (*idt)[vector] = gate(handler) };
    }
    use_idt();
}

/// Enables the local APIC and starts its timer: periodic, `count` ticks of the bus clock
/// (divide by 1).
pub fn start_timer(count: u32) {
    apic_write(0xf0, 0x1ff);
    apic_write(0x3e0, 0xb);
    apic_write(0x320, 1 << 17 | u32::from(TIMER_VECTOR));
    apic_write(0x380, count);
}

/// Whether the local APIC timer has a TSC-deadline mode (CPUID.1:ECX[24]).
pub fn has_tsc_deadline() -> bool {
    // CPUID exits to the hypervisor, which answers.
    let ecx = core::arch::x86_64::__cpuid(1).ecx;
    ecx & 1 << 24 != 0
}

/// Puts the local APIC timer in TSC-deadline mode with [`TIMER_VECTOR`], the APIC enabled.
pub fn start_deadline_timer() {
    apic_write(0xf0, 0x1ff);
    apic_write(0x320, 0b10 << 17 | u32::from(TIMER_VECTOR));
}

/// Puts the local APIC timer in one-shot mode with [`TIMER_VECTOR`] (divide by 1), the APIC
/// enabled, not yet counting.
pub fn start_oneshot_timer() {
    apic_write(0xf0, 0x1ff);
    apic_write(0x3e0, 0xb);
    apic_write(0x320, u32::from(TIMER_VECTOR));
}

/// Starts the one-shot timer with `count` ticks.
pub fn arm_oneshot(count: u32) {
    apic_write(0x380, count);
}

/// The one-shot timer's current count, with the TSC just before and just after reading it
/// (the read traps: the count is sampled in between).
pub fn current_count() -> (u64, u32, u64) {
    let before = now();
    let count = apic_read(0x390);
    (before, count, now())
}

/// Arms the TSC deadline (`IA32_TSC_DEADLINE`, which the hypervisor lets a cell write for
/// its own CPU's timer).
pub fn set_deadline(tsc: u64) {
    // SAFETY: the MSR arms this CPU's local APIC timer; no memory effect.
    unsafe {
        asm!("wrmsr", in("ecx") 0x6e0u32, in("eax") tsc as u32, in("edx") (tsc >> 32) as u32,
             options(nomem, nostack))
    };
}

/// The TSC.
pub fn now() -> u64 {
    // SAFETY: RDTSC has no memory effect.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The TSC's frequency as the hypervisor measured it (the communication region's platform
/// information), in Hz.
pub fn tsc_frequency() -> u64 {
    let at = COMM_REGION
        + comm::offset::PLATFORM as u64
        + core::mem::offset_of!(comm::Platform, timer_frequency) as u64;
    // SAFETY: the communication region, mapped by the hypervisor and by `_start`; an
    // aligned 64-bit field.
    unsafe { (at as *const u64).read_volatile() }
}

/// Waits for the next interrupt.
pub fn wait_for_interrupt() {
    // SAFETY: STI; HLT waits for the timer (its handler only ends it); CLI after.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Lets a pending interrupt in (STI; NOP: the one-instruction interrupt shadow; CLI).
pub fn enable_interrupts_briefly() {
    // SAFETY: interrupts go to the IDT of `load_idt`; no memory effect.
    unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// Whether the hypervisor asks the cell to shut down.
pub fn shutdown_requested() -> bool {
    let message = (COMM_REGION + comm::offset::MSG_TO_CELL as u64) as *const u32;
    // SAFETY: the communication region, mapped by the hypervisor and by `_start`.
    unsafe { message.read_volatile() == comm::MSG_SHUTDOWN_REQUEST }
}

/// Approves the shutdown.
pub fn approve_shutdown() {
    let reply = (COMM_REGION + comm::offset::REPLY_FROM_CELL as u64) as *mut u32;
    // SAFETY: as for `shutdown_requested`.
    unsafe { reply.write_volatile(comm::REPLY_APPROVED) };
}

/// Refuses the shutdown.
pub fn deny_shutdown() {
    let reply = (COMM_REGION + comm::offset::REPLY_FROM_CELL as u64) as *mut u32;
    // SAFETY: as for `shutdown_requested`.
    unsafe { reply.write_volatile(comm::REPLY_DENIED) };
}

/// Whether the hypervisor waits for a reply (it clears the last one with each new request).
pub fn reply_pending() -> bool {
    let reply = (COMM_REGION + comm::offset::REPLY_FROM_CELL as u64) as *const u32;
    // SAFETY: as for `shutdown_requested`.
    unsafe { reply.read_volatile() == comm::REPLY_NONE }
}

/// Stops here, interrupts off.
pub fn park() -> ! {
    loop {
        // SAFETY: no memory effect.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    let _ = fmt::Write::write_str(&mut Console, "inmate: panic\n");
    park()
}
