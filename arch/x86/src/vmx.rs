//! Intel VMX: VMXON, a VMCS, and one world switch (Intel SDM Vol. 3C chapters 24 to 27;
//! field encodings in Appendix B, capability MSRs in Vol. 3D Appendix A).

use core::arch::asm;
use core::fmt;

use x86_64::registers::model_specific::Msr;

use crate::page::Page;

const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub(crate) const IA32_VMX_BASIC: u32 = 0x480;
pub(crate) const IA32_VMX_CR0_FIXED0: u32 = 0x486;
const IA32_VMX_CR0_FIXED1: u32 = 0x487;
pub(crate) const IA32_VMX_CR4_FIXED0: u32 = 0x488;
pub(crate) const IA32_VMX_CR4_FIXED1: u32 = 0x489;
/// Control capability MSRs: pin-based, primary processor-based, exit, entry (the TRUE_*
/// variants 0x48d to 0x490 when IA32_VMX_BASIC bit 55 says so), secondary.
pub(crate) const PINBASED: [u32; 2] = [0x481, 0x48d];
pub(crate) const PROCBASED: [u32; 2] = [0x482, 0x48e];
pub(crate) const EXIT: [u32; 2] = [0x483, 0x48f];
pub(crate) const ENTRY: [u32; 2] = [0x484, 0x490];
pub(crate) const PROCBASED2: u32 = 0x48b;

/// VMCS field encodings (Appendix B).
#[allow(missing_docs)]
pub mod field {
    pub const VMCS_LINK_POINTER: u64 = 0x2800;
    pub const EPT_POINTER: u64 = 0x201a;
    pub const PIN_BASED: u64 = 0x4000;
    pub const PROC_BASED: u64 = 0x4002;
    pub const EXCEPTION_BITMAP: u64 = 0x4004;
    pub const EXIT_CONTROLS: u64 = 0x400c;
    pub const ENTRY_CONTROLS: u64 = 0x4012;
    pub const PROC_BASED2: u64 = 0x401e;
    pub const INSTRUCTION_ERROR: u64 = 0x4400;
    pub const EXIT_REASON: u64 = 0x4402;
    pub const EXIT_INSTRUCTION_LENGTH: u64 = 0x440c;
    pub const EXIT_QUALIFICATION: u64 = 0x6400;
    pub const GUEST_PHYSICAL_ADDRESS: u64 = 0x2400;
    // Guest segments: selector, limit, access rights, base, for ES CS SS DS FS GS LDTR TR.
    pub const GUEST_ES_SELECTOR: u64 = 0x0800;
    pub const GUEST_ES_LIMIT: u64 = 0x4800;
    pub const GUEST_ES_ACCESS: u64 = 0x4814;
    pub const GUEST_ES_BASE: u64 = 0x6806;
    pub const GUEST_GDTR_LIMIT: u64 = 0x4810;
    pub const GUEST_IDTR_LIMIT: u64 = 0x4812;
    pub const GUEST_GDTR_BASE: u64 = 0x6816;
    pub const GUEST_IDTR_BASE: u64 = 0x6818;
    pub const GUEST_INTERRUPTIBILITY: u64 = 0x4824;
    pub const GUEST_ACTIVITY: u64 = 0x4826;
    pub const GUEST_SYSENTER_CS: u64 = 0x482a;
    pub const GUEST_CR0: u64 = 0x6800;
    pub const GUEST_CR3: u64 = 0x6802;
    pub const GUEST_CR4: u64 = 0x6804;
    pub const GUEST_DR7: u64 = 0x681a;
    pub const GUEST_RSP: u64 = 0x681c;
    pub const GUEST_RIP: u64 = 0x681e;
    pub const GUEST_RFLAGS: u64 = 0x6820;
    pub const GUEST_PENDING_DEBUG: u64 = 0x6822;
    pub const GUEST_DEBUGCTL: u64 = 0x2802;
    pub const HOST_ES_SELECTOR: u64 = 0x0c00;
    pub const HOST_CS_SELECTOR: u64 = 0x0c02;
    pub const HOST_SS_SELECTOR: u64 = 0x0c04;
    pub const HOST_DS_SELECTOR: u64 = 0x0c06;
    pub const HOST_FS_SELECTOR: u64 = 0x0c08;
    pub const HOST_GS_SELECTOR: u64 = 0x0c0a;
    pub const HOST_TR_SELECTOR: u64 = 0x0c0c;
    pub const HOST_CR0: u64 = 0x6c00;
    pub const HOST_CR3: u64 = 0x6c02;
    pub const HOST_CR4: u64 = 0x6c04;
    pub const HOST_FS_BASE: u64 = 0x6c06;
    pub const HOST_GS_BASE: u64 = 0x6c08;
    pub const HOST_TR_BASE: u64 = 0x6c0a;
    pub const HOST_GDTR_BASE: u64 = 0x6c0c;
    pub const HOST_IDTR_BASE: u64 = 0x6c0e;
    pub const HOST_RSP: u64 = 0x6c14;
    pub const HOST_RIP: u64 = 0x6c16;
}

/// Why VMX could not be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmxError {
    /// IA32_FEATURE_CONTROL is locked with VMX off.
    DisabledByFirmware,
    /// VMXON, VMCLEAR or VMPTRLD failed.
    Instruction(&'static str),
    /// VMLAUNCH or VMRESUME failed; the VM-instruction error number (Vol. 3C §31.4).
    Entry(u64),
    /// A control the CPU cannot provide.
    Unsupported(&'static str),
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DisabledByFirmware => {
                f.write_str("VMX is disabled by the firmware (IA32_FEATURE_CONTROL)")
            }
            Self::Instruction(name) => write!(f, "{name} failed"),
            Self::Entry(error) => write!(f, "VM entry failed: VM-instruction error {error}"),
            Self::Unsupported(what) => write!(f, "the CPU cannot {what}"),
        }
    }
}

/// Reads an MSR that every CPU with VMX has: VMX's own, PAT, EFER.
pub(crate) fn msr(index: u32) -> u64 {
    // SAFETY: every MSR read through this exists on a CPU with VMX (checked with CPUID by
    // the caller); reads have no effect.
    unsafe { Msr::new(index).read() }
}

/// The VMCS revision identifier (IA32_VMX_BASIC bits 30:0).
fn revision() -> u32 {
    msr(IA32_VMX_BASIC) as u32 & 0x7fff_ffff
}

/// `wanted` adjusted to what the capability MSR allows: its low half must be 1, its high half
/// may be 1 (Vol. 3D A.3).
pub(crate) fn adjust(wanted: u32, capability: u64) -> u32 {
    (wanted | capability as u32) & (capability >> 32) as u32
}

/// Turns VMX on on this CPU with `region` as its VMXON region.
pub fn enable(region: &'static Page) -> Result<(), VmxError> {
    let control = msr(IA32_FEATURE_CONTROL);
    if control & 1 != 0 && control & 1 << 2 == 0 {
        return Err(VmxError::DisabledByFirmware);
    }
    if control & 1 == 0 {
        // SAFETY: unlocked: lock it with VMX outside SMX enabled, as firmware would.
        unsafe { Msr::new(IA32_FEATURE_CONTROL).write(control | 1 | 1 << 2) };
    }
    // CR0 and CR4 as VMX requires (the fixed bits; CR0.NE above all, and CR4.VMXE).
    // SAFETY: setting the bits VMX operation requires changes no mapping.
    unsafe {
        let mut cr0: u64;
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        cr0 = (cr0 | msr(IA32_VMX_CR0_FIXED0)) & msr(IA32_VMX_CR0_FIXED1);
        asm!("mov cr0, {}", in(reg) cr0, options(nostack));
        let mut cr4: u64;
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
        cr4 = (cr4 | 1 << 13 | msr(IA32_VMX_CR4_FIXED0)) & msr(IA32_VMX_CR4_FIXED1);
        asm!("mov cr4, {}", in(reg) cr4, options(nostack));
    }
    let address = region.address();
    // SAFETY: the region is this CPU's page; the revision goes into its first word.
    unsafe { (address as *mut u32).write_volatile(revision()) };
    let failed: u8;
    // SAFETY: VMXON with a valid region; CF or ZF report failure.
    unsafe {
        asm!("vmxon [{}]", "setbe {}", in(reg) &address, out(reg_byte) failed, options(nostack));
    }
    if failed != 0 {
        return Err(VmxError::Instruction("VMXON"));
    }
    Ok(())
}

/// Writes a VMCS field of the current VMCS.
pub fn write(field: u64, value: u64) {
    // SAFETY: a VMCS is current (`Vmcs::load`); a bad field only sets the error flags.
    unsafe { asm!("vmwrite {}, {}", in(reg) field, in(reg) value, options(nostack)) };
}

/// Reads a VMCS field of the current VMCS.
pub fn read(field: u64) -> u64 {
    let value: u64;
    // SAFETY: as for `write`.
    unsafe { asm!("vmread {}, {}", out(reg) value, in(reg) field, options(nostack)) };
    value
}

/// Makes `page` the current VMCS, cleared.
pub fn load(page: &'static Page) -> Result<(), VmxError> {
    let address = page.address();
    // SAFETY: the page is this CPU's; the revision goes into its first word.
    unsafe { (address as *mut u32).write_volatile(revision()) };
    let failed: u8;
    // SAFETY: VMCLEAR then VMPTRLD of a valid region; CF or ZF report failure.
    unsafe {
        asm!(
            "vmclear [{a}]",
            "jbe 2f",
            "vmptrld [{a}]",
            "2:",
            "setbe {f}",
            a = in(reg) &address,
            f = out(reg_byte) failed,
            options(nostack)
        );
    }
    if failed != 0 {
        return Err(VmxError::Instruction("VMCLEAR or VMPTRLD"));
    }
    Ok(())
}

/// Sets the current VMCS up for a real-mode guest (unrestricted guest, EPT at `eptp`) at
/// `rip`, exiting on CPUID (always) and HLT, with this CPU's current state as the host's.
pub fn setup_real_mode(rip: u64, eptp: u64) -> Result<(), VmxError> {
    use field::*;
    let basic = msr(IA32_VMX_BASIC);
    let true_controls = usize::from(basic & 1 << 55 != 0);
    let secondary_wanted = 1 << 1 | 1 << 7; // EPT, unrestricted guest
    let secondary = adjust(secondary_wanted, msr(PROCBASED2));
    if secondary & secondary_wanted != secondary_wanted {
        return Err(VmxError::Unsupported("run an unrestricted guest with EPT"));
    }
    write(
        PIN_BASED,
        u64::from(adjust(0, msr(PINBASED[true_controls]))),
    );
    // HLT exiting (7), secondary controls (31).
    let primary = adjust(1 << 7 | 1 << 31, msr(PROCBASED[true_controls]));
    write(PROC_BASED, u64::from(primary));
    write(PROC_BASED2, u64::from(secondary));
    // Host address-space size (9): the host is 64-bit.
    write(
        EXIT_CONTROLS,
        u64::from(adjust(1 << 9, msr(EXIT[true_controls]))),
    );
    write(
        ENTRY_CONTROLS,
        u64::from(adjust(0, msr(ENTRY[true_controls]))),
    );
    write(EXCEPTION_BITMAP, 0);
    write(EPT_POINTER, eptp);
    write(VMCS_LINK_POINTER, u64::MAX);

    // The guest: real mode at `rip`.
    for n in 0..8u64 {
        let (access, limit) = match n {
            1 => (0x9b, 0xffff), // CS: code, accessed
            6 => (1 << 16, 0),   // LDTR: unusable
            7 => (0x8b, 0xffff), // TR: busy TSS
            _ => (0x93, 0xffff), // data, accessed
        };
        write(GUEST_ES_SELECTOR + 2 * n, 0);
        write(GUEST_ES_LIMIT + 2 * n, limit);
        write(GUEST_ES_ACCESS + 2 * n, access);
        write(GUEST_ES_BASE + 2 * n, 0);
    }
    write(GUEST_GDTR_LIMIT, 0xffff);
    write(GUEST_IDTR_LIMIT, 0xffff);
    write(GUEST_GDTR_BASE, 0);
    write(GUEST_IDTR_BASE, 0);
    let cr0_fixed0 = msr(IA32_VMX_CR0_FIXED0) & !(1 | 1 << 31); // PE and PG may be 0
    write(GUEST_CR0, 0x10 | 0x20 | cr0_fixed0);
    write(GUEST_CR3, 0);
    write(GUEST_CR4, msr(IA32_VMX_CR4_FIXED0));
    write(GUEST_DR7, 0x400);
    write(GUEST_RSP, 0);
    write(GUEST_RIP, rip);
    write(GUEST_RFLAGS, 0x2);
    write(GUEST_PENDING_DEBUG, 0);
    write(GUEST_INTERRUPTIBILITY, 0);
    write(GUEST_ACTIVITY, 0);
    write(GUEST_SYSENTER_CS, 0);
    write(GUEST_DEBUGCTL, 0);

    write_host_state();
    Ok(())
}

/// The current VMCS's host state: this CPU as it runs now, its control registers,
/// descriptor tables, segment selectors and TR (RSP and RIP are written at each entry).
pub(crate) fn write_host_state() {
    use field::*;
    let (cr0, cr3, cr4): (u64, u64, u64);
    // SAFETY: reads of control registers.
    unsafe {
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
    }
    write(HOST_CR0, cr0);
    write(HOST_CR3, cr3);
    write(HOST_CR4, cr4);
    let gdt = x86_64::instructions::tables::sgdt();
    let idt = x86_64::instructions::tables::sidt();
    write(HOST_GDTR_BASE, gdt.base.as_u64());
    write(HOST_IDTR_BASE, idt.base.as_u64());
    let (cs, ds, tr) = crate::gdt::selectors();
    write(HOST_CS_SELECTOR, cs);
    for selector in [HOST_SS_SELECTOR, HOST_DS_SELECTOR, HOST_ES_SELECTOR] {
        write(selector, ds);
    }
    write(HOST_FS_SELECTOR, 0);
    write(HOST_GS_SELECTOR, 0);
    write(HOST_TR_SELECTOR, tr);
    write(HOST_TR_BASE, crate::gdt::tss_base());
    write(HOST_FS_BASE, 0);
    write(HOST_GS_BASE, 0);
}

/// Enters the guest (VMLAUNCH the first time, VMRESUME after) and returns the exit reason's
/// basic number (bits 15:0), or the entry's failure.
pub fn run(launched: bool) -> Result<u64, VmxError> {
    let failed: u64;
    // SAFETY: the current VMCS is set up (`setup_real_mode`). The host's RSP and RIP are
    // written just before the entry: a VM exit continues at label 2 with this stack; every
    // general-purpose register but RSP is the guest's then, so all are clobbered, and RBX
    // and RBP (which asm! cannot clobber) are saved around.
    unsafe {
        asm!(
            "push rbx",
            "push rbp",
            "mov rax, {host_rsp}",
            "vmwrite rax, rsp",
            "lea rdx, [rip + 2f]",
            "mov rax, {host_rip}",
            "vmwrite rax, rdx",
            "test rcx, rcx",
            "jnz 3f",
            "vmlaunch",
            "jmp 4f",
            "3:",
            "vmresume",
            "4:",
            // Only reached when the entry failed.
            "mov rcx, 1",
            "jmp 5f",
            "2:",
            "xor ecx, ecx",
            "5:",
            "pop rbp",
            "pop rbx",
            host_rsp = const field::HOST_RSP,
            host_rip = const field::HOST_RIP,
            inout("rcx") u64::from(launched) => failed,
            out("rax") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
        );
    }
    if failed != 0 {
        return Err(VmxError::Entry(read(field::INSTRUCTION_ERROR)));
    }
    Ok(read(field::EXIT_REASON) & 0xffff)
}
