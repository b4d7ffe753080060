//! A CPU of the hypervisor's that waits for work sleeps in HLT until another CPU sets its
//! mailbox and sends it an NMI ([`wait`], [`NMI_HANDLER`]).
//!
//! The hypervisor runs with interrupts disabled, and HLT then wakes only on an NMI (or INIT or
//! SMI). The race between looking at the mailbox and halting is closed in the NMI handler:
//! an NMI that interrupts the wait between the mailbox load and the HLT moves the saved RIP
//! back to the load, so the HLT never sleeps past a kick (and one in the VMX entry between
//! its kick check and VMLAUNCH or VMRESUME back to the check). An NMI anywhere else in the
//! hypervisor is dropped: NMIs between the hypervisor's CPUs are kicks, which are also
//! flags that their receivers read (see `svm::Vmcb::enter`); a guest's own NMIs are
//! intercepted while it runs and injected back into it.

use core::arch::global_asm;
use core::sync::atomic::AtomicU32;

global_asm!(
    r#"
    .section .text.wait, "ax"
    .global cellvisor_wait_mailbox
cellvisor_wait_mailbox:
cellvisor_wait_load:
    mov eax, dword ptr [rdi]
cellvisor_wait_test:
    test eax, eax
    jnz 2f
cellvisor_wait_hlt:
    hlt
    jmp cellvisor_wait_load
2:
    ret

    .balign 16
    .global cellvisor_nmi
cellvisor_nmi:
    push rax
    mov rax, qword ptr [rsp + 8]
    cmp rax, offset cellvisor_wait_test
    jb 3f
    cmp rax, offset cellvisor_wait_hlt
    ja 3f
    mov rax, offset cellvisor_wait_load
    mov qword ptr [rsp + 8], rax
    jmp 4f
3:
    // The VMX entry's window (`vmcs`): from its kick check to VMLAUNCH or VMRESUME.
    cmp rax, offset cellvisor_vmx_check
    jb 4f
    cmp rax, offset cellvisor_vmx_check_end
    jae 4f
    mov rax, offset cellvisor_vmx_check
    mov qword ptr [rsp + 8], rax
4:
    pop rax
    iretq

    // An interrupt taken in the hypervisor (only while `drain` lets them in): ended.
    .balign 16
    .global cellvisor_drain_irq
cellvisor_drain_irq:
    push rax
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
"#
);

extern "C" {
    fn cellvisor_wait_mailbox(mailbox: *const AtomicU32);
    fn cellvisor_nmi();
    fn cellvisor_drain_irq();
}

/// The handler of vectors 32 to 255, for the IDT: it ends the interrupt at the local APIC.
pub fn drain_handler() -> u64 {
    cellvisor_drain_irq as *const () as usize as u64
}

/// Lets the interrupts pending at this CPU's local APIC in for a moment: each is taken by
/// [`drain_handler`] and ended.
pub fn drain() {
    // SAFETY: every vector from 32 has the drain handler, which only writes the local APIC's
    // EOI register; interrupts are disabled again right after.
    unsafe { core::arch::asm!("sti", "nop", "nop", "cli", options(nomem, nostack)) };
}

/// The NMI handler's address, for the IDT.
pub fn nmi_handler() -> u64 {
    cellvisor_nmi as *const () as usize as u64
}

/// Sleeps until `mailbox` is not zero (interrupts must be disabled, as they are in the
/// hypervisor); another CPU stores to it and sends this CPU an NMI.
pub fn wait(mailbox: &AtomicU32) {
    // SAFETY: the function reads the mailbox (an atomic, through a shared reference) with a
    // plain 32-bit load, which is atomic on x86, and halts; it touches nothing else but RAX.
    unsafe { cellvisor_wait_mailbox(mailbox.as_ptr().cast_const().cast()) };
}
