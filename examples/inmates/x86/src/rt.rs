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

    // Interrupts: the local APIC's interrupt ended, nothing else.
    .balign 16
    .global inmate_irq
inmate_irq:
    push rax
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
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
    fn inmate_exception();
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

/// A local APIC register.
pub fn apic_read(offset: u64) -> u32 {
    // SAFETY: the local APIC's page, mapped by `_start` (the access traps and is emulated).
    unsafe { ((LOCAL_APIC + offset) as *const u32).read_volatile() }
}

/// Writes a local APIC register.
pub fn apic_write(offset: u64, value: u32) {
    // SAFETY: as for `apic_read`.
    unsafe { ((LOCAL_APIC + offset) as *mut u32).write_volatile(value) };
}

/// One IDT entry (64-bit interrupt gate).
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    low: u64,
    high: u64,
}

static mut IDT: [Gate; 256] = [Gate { low: 0, high: 0 }; 256];

/// Loads an IDT: exceptions stop the inmate, every interrupt is ended at the local APIC.
pub fn load_idt() {
    let gate = |handler: u64| Gate {
        low: (handler & 0xffff) | 0x08 << 16 | 0x8e << 40 | ((handler >> 16) & 0xffff) << 48,
        high: handler >> 32,
    };
    let idt = &raw mut IDT;
    for vector in 0..256 {
        let handler = if vector < 32 {
            inmate_exception as *const () as u64
        } else {
            inmate_irq as *const () as u64
        };
        // SAFETY: one CPU, before interrupts are enabled; the IDT is ours.
        unsafe { (*idt)[vector] = gate(handler) };
    }
    let pointer = [
        (256 * 16 - 1) as u64 | (idt as u64) << 16,
        (idt as u64) >> 48,
    ];
    // SAFETY: the pointer names the IDT above, which lives as long as the inmate.
    unsafe { asm!("lidt [{}]", in(reg) pointer.as_ptr(), options(nostack)) };
}

/// Enables the local APIC and starts its timer: periodic, `count` ticks of the bus clock
/// (divide by 1).
pub fn start_timer(count: u32) {
    apic_write(0xf0, 0x1ff);
    apic_write(0x3e0, 0xb);
    apic_write(0x320, 1 << 17 | u32::from(TIMER_VECTOR));
    apic_write(0x380, count);
}

/// Waits for the next interrupt.
pub fn wait_for_interrupt() {
    // SAFETY: STI; HLT waits for the timer (its handler only ends it); CLI after.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
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
