//! `smp-demo` for x86 cells with two CPUs: the cell's start runs its first CPU only (the
//! bootstrap processor); the other waits, as a PC's application processors do, for INIT and
//! a start-up IPI, which the hypervisor lets the cell send to its own CPUs. The first CPU:
//!
//! - starts the second (local APIC ID one above its own) with INIT and two start-up IPIs
//!   at the real-mode trampoline below (the `.text.ap` page), which switches to long mode on
//!   the same page tables and counts the start;
//! - sends it an NMI, which its handler counts;
//! - stops it with another INIT and starts it again: the trampoline runs a second time;
//! - prints what it saw on COM2 and waits for the shutdown request, which it approves.
//!
//! ```text
//! smp-demo: BSP local APIC ID 2, starting APIC ID 3
//! smp-demo: AP up after INIT and start-up IPI, vector 0x1
//! smp-demo: NMI to the AP received
//! smp-demo: AP stopped by INIT and up again: 2 starts
//! smp-demo: shutdown approved
//! ```

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
#[path = "../rt.rs"]
#[allow(dead_code)]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    // The start-up IPI's entry: real mode at CS = vector << 8, IP = 0. A GDT with a 32-bit
    // code segment (0x18) besides the runtime's 64-bit one (0x08) and data (0x10); protected
    // mode, then long mode on the page tables `_start` built, then `smp_ap_main`.
    .section .text.ap, "ax"
    .balign 4096
    .global smp_trampoline
    .code16
smp_trampoline:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [smp_gdt_pointer]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    // ljmp 0x18:smp_protected, with a 32-bit offset.
    .byte 0x66, 0xea
    .long smp_protected
    .word 0x18

    .code32
smp_protected:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
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
    // ljmp 0x08:smp_long.
    .byte 0xea
    .long smp_long
    .word 0x08

    .code64
smp_long:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, offset smp_ap_stack_top
    call smp_ap_main
2:
    cli
    hlt
    jmp 2b

    // The NMI: counted.
    .balign 16
    .global smp_nmi
smp_nmi:
    lock inc qword ptr [rip + smp_nmi_count]
    iretq

    .section .rodata.smp, "a"
    .balign 16
smp_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf9a000000ffff
smp_gdt_pointer:
    .word 31
    .long smp_gdt

    .section .bss.smp, "aw", @nobits
    .balign 16
    .skip 0x2000
smp_ap_stack_top:
"#
);

#[cfg(target_os = "none")]
mod ap {
    use core::sync::atomic::{AtomicU64, Ordering};

    /// Starts of the second CPU (the trampoline's).
    pub static STARTS: AtomicU64 = AtomicU64::new(0);
    /// NMIs it took.
    #[export_name = "smp_nmi_count"]
    pub static NMIS: AtomicU64 = AtomicU64::new(0);

    extern "C" {
        pub fn smp_trampoline();
        pub fn smp_nmi();
    }

    /// The second CPU in long mode: counts its start, takes the IDT, waits for what comes
    /// (NMIs, an INIT).
    #[no_mangle]
    extern "C" fn smp_ap_main() -> ! {
        super::rt::use_idt();
        STARTS.fetch_add(1, Ordering::SeqCst);
        loop {
            // SAFETY: an NMI comes through the IDT; no maskable interrupt is enabled.
            unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
        }
    }

    /// Waits until `counter` reaches `value` (a second at most, on the TSC); returns
    /// whether it did.
    pub fn wait_for(counter: &AtomicU64, value: u64) -> bool {
        let deadline = super::rt::now() + super::rt::tsc_frequency();
        while super::rt::now() < deadline {
            if counter.load(Ordering::SeqCst) >= value {
                return true;
            }
            core::hint::spin_loop();
        }
        false
    }
}

#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn inmate_main() -> ! {
    use core::fmt::Write as _;
    use core::sync::atomic::Ordering;

    /// Interrupt command register, low and high halves.
    const ICR_LOW: u64 = 0x300;
    const ICR_HIGH: u64 = 0x310;
    /// Delivery modes with the level asserted (Intel SDM Vol. 3A §11.6.1).
    const INIT: u32 = 0x4500;
    const STARTUP: u32 = 0x4600;
    const NMI: u32 = 0x4400;

    let mut console = rt::Console::init();
    let apic_id = rt::apic_read(0x20) >> 24;
    let target = apic_id + 1;
    let _ = writeln!(
        console,
        "smp-demo: BSP local APIC ID {apic_id}, starting APIC ID {target}"
    );
    rt::load_idt();
    rt::set_gate(2, ap::smp_nmi as *const () as u64);
    let ipi = |low: u32| {
        rt::apic_write(ICR_HIGH, target << 24);
        rt::apic_write(ICR_LOW, low);
    };
    let vector = (ap::smp_trampoline as *const () as u64 >> 12) as u32;
    let start = || {
        ipi(INIT);
        ipi(STARTUP | vector);
        ipi(STARTUP | vector);
    };

    start();
    if !ap::wait_for(&ap::STARTS, 1) {
        let _ = writeln!(console, "smp-demo: the AP did not start");
        rt::park()
    }
    let _ = writeln!(
        console,
        "smp-demo: AP up after INIT and start-up IPI, vector {vector:#x}"
    );
    ipi(NMI);
    if ap::wait_for(&ap::NMIS, 1) {
        let _ = writeln!(console, "smp-demo: NMI to the AP received");
    } else {
        let _ = writeln!(console, "smp-demo: no NMI at the AP");
    }
    start();
    ap::wait_for(&ap::STARTS, 2);
    let _ = writeln!(
        console,
        "smp-demo: AP stopped by INIT and up again: {} starts",
        ap::STARTS.load(Ordering::SeqCst)
    );
    while !rt::shutdown_requested() {
        core::hint::spin_loop();
    }
    rt::approve_shutdown();
    let _ = writeln!(console, "smp-demo: shutdown approved");
    rt::park()
}

#[cfg(not(target_os = "none"))]
fn main() {}
