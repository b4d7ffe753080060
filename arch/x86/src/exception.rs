//! The hypervisor's own exceptions: a hypervisor bug (an NMI is not one: see `wait`). Each of the 32 architectural vectors
//! has a stub that pushes the vector (and a zero where the CPU pushes no error code) and the
//! general-purpose registers, then [`report`] prints the state and parks the CPU. Without
//! it, an exception in the hypervisor would triple-fault and reset the machine silently.
//! Vectors with an error code: Intel SDM Vol. 3A Table 6-1.

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::mem::MaybeUninit;

use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::VirtAddr;

global_asm!(
    r#"
    .macro cellvisor_stub vector, error
    .balign 16
cellvisor_exception_\vector:
    .if \error == 0
    push 0
    .endif
    push \vector
    jmp cellvisor_exception_common
    .endm

    .section .text.exception, "ax"
    cellvisor_stub 0, 0
    cellvisor_stub 1, 0
    cellvisor_stub 2, 0
    cellvisor_stub 3, 0
    cellvisor_stub 4, 0
    cellvisor_stub 5, 0
    cellvisor_stub 6, 0
    cellvisor_stub 7, 0
    cellvisor_stub 8, 1
    cellvisor_stub 9, 0
    cellvisor_stub 10, 1
    cellvisor_stub 11, 1
    cellvisor_stub 12, 1
    cellvisor_stub 13, 1
    cellvisor_stub 14, 1
    cellvisor_stub 15, 0
    cellvisor_stub 16, 0
    cellvisor_stub 17, 1
    cellvisor_stub 18, 0
    cellvisor_stub 19, 0
    cellvisor_stub 20, 0
    cellvisor_stub 21, 1
    cellvisor_stub 22, 0
    cellvisor_stub 23, 0
    cellvisor_stub 24, 0
    cellvisor_stub 25, 0
    cellvisor_stub 26, 0
    cellvisor_stub 27, 0
    cellvisor_stub 28, 0
    cellvisor_stub 29, 1
    cellvisor_stub 30, 1
    cellvisor_stub 31, 0

cellvisor_exception_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call {report}
    ud2

    .section .rodata.exception, "a"
    .balign 8
    .global cellvisor_exception_stubs
cellvisor_exception_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad cellvisor_exception_\n
    .endr
"#,
    report = sym report,
);

unsafe extern "C" {
    static cellvisor_exception_stubs: [u64; 32];
}

/// What the stubs leave on the stack: the registers they pushed, the vector, the error code
/// (or 0) and the CPU's interrupt frame.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    /// General-purpose registers, as pushed (r15 last, so first here).
    pub r15: u64,
    #[allow(missing_docs)]
    pub r14: u64,
    #[allow(missing_docs)]
    pub r13: u64,
    #[allow(missing_docs)]
    pub r12: u64,
    #[allow(missing_docs)]
    pub r11: u64,
    #[allow(missing_docs)]
    pub r10: u64,
    #[allow(missing_docs)]
    pub r9: u64,
    #[allow(missing_docs)]
    pub r8: u64,
    #[allow(missing_docs)]
    pub rbp: u64,
    #[allow(missing_docs)]
    pub rdi: u64,
    #[allow(missing_docs)]
    pub rsi: u64,
    #[allow(missing_docs)]
    pub rdx: u64,
    #[allow(missing_docs)]
    pub rcx: u64,
    #[allow(missing_docs)]
    pub rbx: u64,
    #[allow(missing_docs)]
    pub rax: u64,
    /// The vector (0 to 31).
    pub vector: u64,
    /// The error code, 0 for vectors without one.
    pub error: u64,
    /// Where the exception happened.
    pub rip: u64,
    /// Its code segment.
    pub cs: u64,
    /// Its flags.
    pub rflags: u64,
    /// Its stack pointer.
    pub rsp: u64,
    /// Its stack segment.
    pub ss: u64,
}

/// The name of an exception vector.
pub const fn name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack fault",
        13 => "general protection",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating point",
        20 => "virtualization exception",
        21 => "control protection",
        28 => "hypervisor injection",
        29 => "VMM communication",
        30 => "security exception",
        _ => "reserved vector",
    }
}

/// The IDT every CPU loads, filled once by the boot CPU before it starts the others.
struct Idt(UnsafeCell<MaybeUninit<InterruptDescriptorTable>>);

// SAFETY: written once by the boot CPU before any other CPU runs, only read afterwards.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new(MaybeUninit::uninit()));

/// Fills the IDT (boot CPU, once, before the other CPUs run).
pub fn init() {
    // SAFETY: the stub table is 32 addresses in .rodata.
    let stubs = unsafe { &cellvisor_exception_stubs };
    // SAFETY: only the boot CPU runs, and no CPU has loaded the IDT yet.
    let idt = unsafe { (*IDT.0.get()).write(InterruptDescriptorTable::new()) };
    macro_rules! set {
        ($($field:ident = $vector:literal),*) => {$(
            // SAFETY: each stub is a valid handler for its vector: it saves every register
            // and never returns.
            unsafe { idt.$field.set_handler_addr(VirtAddr::new(stubs[$vector])) };
        )*};
    }
    set!(
        divide_error = 0,
        debug = 1,
        breakpoint = 3,
        overflow = 4,
        bound_range_exceeded = 5,
        invalid_opcode = 6,
        device_not_available = 7,
        double_fault = 8,
        invalid_tss = 10,
        segment_not_present = 11,
        stack_segment_fault = 12,
        general_protection_fault = 13,
        page_fault = 14,
        x87_floating_point = 16,
        alignment_check = 17,
        machine_check = 18,
        simd_floating_point = 19,
        virtualization = 20,
        cp_protection_exception = 21,
        hv_injection_exception = 28,
        vmm_communication_exception = 29,
        security_exception = 30
    );
    // SAFETY: the NMI handler saves and restores what it uses and returns with IRETQ (see
    // `wait`).
    unsafe {
        idt.non_maskable_interrupt
            .set_handler_addr(VirtAddr::new(crate::wait::nmi_handler()))
    };
    for vector in 32..=255u8 {
        // SAFETY: the drain handler ends the interrupt and returns (see `wait::drain`); the
        // hypervisor takes interrupts only there.
        unsafe { idt[vector].set_handler_addr(VirtAddr::new(crate::wait::drain_handler())) };
    }
}

/// Loads the IDT on this CPU.
pub fn load() {
    // SAFETY: written by `init` before any CPU loads it, never written again.
    let idt: &'static InterruptDescriptorTable = unsafe { (*IDT.0.get()).assume_init_ref() };
    idt.load();
}

/// Prints a hypervisor exception and parks the CPU.
extern "C" fn report(frame: &ExceptionFrame) -> ! {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let mut console = crate::console();
    let _guard = crate::lock_console();
    let _ = writeln!(
        console,
        "cellvisor: hypervisor bug: {} (vector {}, error {:#x}) at RIP {:#018x}, CR2 {:#018x}, \
         CPU with APIC ID {}",
        name(frame.vector),
        frame.vector,
        frame.error,
        frame.rip,
        cr2,
        crate::smp::apic_id()
    );
    let _ = writeln!(
        console,
        "  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n  rsi {:#018x} rdi {:#018x} \
         rbp {:#018x} rsp {:#018x}\n  r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}\n  \
         r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}\n  rflags {:#x} cs {:#x} ss {:#x}",
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
        frame.rsp,
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15,
        frame.rflags,
        frame.cs,
        frame.ss
    );
    let _ = writeln!(console, "cellvisor: CPU parked");
    drop(_guard);
    crate::halt()
}
