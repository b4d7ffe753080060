//! Intel VMX vCPUs for the root cell and the cells: a VMCS set up for a guest in protected
//! or real mode behind EPT, the world switch, and [`Guest`] over the VMCS (Intel SDM Vol. 3C
//! chapters 25 to 28; field encodings in Appendix B, capability MSRs in Vol. 3D Appendix A).
//!
//! The same exit handlers run on SVM and on VMX. What VMX needs and SVM does not stays here:
//! the CR0 and CR4 bits VMX operation fixes (CR0.NE, CR4.VMXE) are the hypervisor's, with the
//! guest's view in the read shadows (a `MOV` to CR0 or CR4 that changes them exits and is
//! emulated in [`Vmcs::enter`]); XSETBV always exits and is done for the guest after checks;
//! RAX is not in the VMCS and is kept beside it; an NMI exit leaves NMIs blocked, which an
//! `IRETQ` to the next instruction lifts.

use core::arch::{asm, global_asm};
use core::sync::atomic::AtomicBool;

use crate::guest::{Exit, Guest, IoExit, NestedFault, Vcpu};
use crate::page::Page;
use crate::svm::GuestRegisters;
use crate::vmx::{self, VmxError};

/// VMCS field encodings used here beyond `vmx::field` (Appendix B).
mod field {
    pub const IO_BITMAP_A: u64 = 0x2000;
    pub const IO_BITMAP_B: u64 = 0x2002;
    pub const MSR_BITMAP: u64 = 0x2004;
    pub const GUEST_PAT: u64 = 0x2804;
    pub const GUEST_EFER: u64 = 0x2806;
    pub const HOST_PAT: u64 = 0x2c00;
    pub const HOST_EFER: u64 = 0x2c02;
    pub const PF_ERROR_MASK: u64 = 0x4006;
    pub const PF_ERROR_MATCH: u64 = 0x4008;
    pub const CR3_TARGET_COUNT: u64 = 0x400a;
    pub const EXIT_MSR_STORE_COUNT: u64 = 0x400e;
    pub const EXIT_MSR_LOAD_COUNT: u64 = 0x4010;
    pub const ENTRY_MSR_LOAD_COUNT: u64 = 0x4014;
    pub const ENTRY_INTERRUPTION: u64 = 0x4016;
    pub const ENTRY_ERROR_CODE: u64 = 0x4018;
    pub const ENTRY_INSTRUCTION_LENGTH: u64 = 0x401a;
    pub const EXIT_INTERRUPTION: u64 = 0x4404;
    pub const IDT_VECTORING: u64 = 0x4408;
    pub const IDT_VECTORING_ERROR: u64 = 0x440a;
    pub const GUEST_CS_SELECTOR: u64 = 0x0802;
    pub const GUEST_CS_ACCESS: u64 = 0x4816;
    pub const GUEST_LDTR_SELECTOR: u64 = 0x080c;
    pub const GUEST_SYSENTER_ESP: u64 = 0x6824;
    pub const GUEST_SYSENTER_EIP: u64 = 0x6826;
    pub const HOST_SYSENTER_CS: u64 = 0x4c00;
    pub const HOST_SYSENTER_ESP: u64 = 0x6c10;
    pub const HOST_SYSENTER_EIP: u64 = 0x6c12;
    pub const CR0_MASK: u64 = 0x6000;
    pub const CR4_MASK: u64 = 0x6002;
    pub const CR0_SHADOW: u64 = 0x6004;
    pub const CR4_SHADOW: u64 = 0x6006;
}

use vmx::field::*;

use vmx::{
    adjust, msr, ENTRY as ENTRY_CTLS, EXIT as EXIT_CTLS, IA32_VMX_BASIC, IA32_VMX_CR0_FIXED0,
    IA32_VMX_CR4_FIXED0, IA32_VMX_CR4_FIXED1, PINBASED, PROCBASED, PROCBASED2,
};

const IA32_PAT: u32 = 0x277;
const IA32_EFER: u32 = 0xc000_0080;

/// Pin-based controls: NMI exiting (3), virtual NMIs (5).
const PIN_NMI_EXITING: u32 = 1 << 3;
const PIN_VIRTUAL_NMIS: u32 = 1 << 5;
/// Primary processor-based controls: HLT exiting (7), MWAIT exiting (10), MONITOR exiting
/// (29), unconditional I/O exiting (24) off, I/O bitmaps (25), MSR bitmaps (28), secondary
/// controls (31). CR3-load and CR3-store exiting (15, 16) off where the CPU allows.
const PROC_HLT: u32 = 1 << 7;
const PROC_NMI_WINDOW: u32 = 1 << 22;
const PROC_MWAIT: u32 = 1 << 10;
const PROC_CR3_LOAD: u32 = 1 << 15;
const PROC_CR3_STORE: u32 = 1 << 16;
const PROC_IO_BITMAPS: u32 = 1 << 25;
const PROC_MSR_BITMAPS: u32 = 1 << 28;
const PROC_MONITOR: u32 = 1 << 29;
const PROC_SECONDARY: u32 = 1 << 31;
/// Secondary controls: EPT (1), RDTSCP (3), unrestricted guest (7), INVPCID (12),
/// XSAVES/XRSTORS (20).
const PROC2_EPT: u32 = 1 << 1;
const PROC2_RDTSCP: u32 = 1 << 3;
const PROC2_UNRESTRICTED: u32 = 1 << 7;
const PROC2_INVPCID: u32 = 1 << 12;
const PROC2_XSAVES: u32 = 1 << 20;
/// Exit controls: save debug controls (2), host address-space size (9), save and load PAT
/// (18, 19), save and load EFER (20, 21).
const EXIT_SAVE_DEBUG: u32 = 1 << 2;
const EXIT_HOST_64: u32 = 1 << 9;
const EXIT_SAVE_PAT: u32 = 1 << 18;
const EXIT_LOAD_PAT: u32 = 1 << 19;
const EXIT_SAVE_EFER: u32 = 1 << 20;
const EXIT_LOAD_EFER: u32 = 1 << 21;
/// Entry controls: load debug controls (2), IA-32e mode guest (9), load PAT (14), load EFER
/// (15).
const ENTRY_LOAD_DEBUG: u32 = 1 << 2;
const ENTRY_IA32E: u32 = 1 << 9;
const ENTRY_LOAD_PAT: u32 = 1 << 14;
const ENTRY_LOAD_EFER: u32 = 1 << 15;

/// CR0: PE, NE, PG; CR4: VMXE.
const CR0_PE: u64 = 1;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_VMXE: u64 = 1 << 13;

/// Basic exit reasons (Vol. 3D Appendix C).
mod reason {
    pub const EXCEPTION_OR_NMI: u64 = 0;
    pub const EXTERNAL_INTERRUPT: u64 = 1;
    pub const TRIPLE_FAULT: u64 = 2;
    pub const INIT: u64 = 3;
    pub const SIPI: u64 = 4;
    pub const NMI_WINDOW: u64 = 8;
    pub const CPUID: u64 = 10;
    pub const HLT: u64 = 12;
    pub const INVD: u64 = 13;
    pub const VMCALL: u64 = 18;
    pub const VMXON: u64 = 27;
    pub const CR_ACCESS: u64 = 28;
    pub const IO: u64 = 30;
    pub const RDMSR: u64 = 31;
    pub const WRMSR: u64 = 32;
    pub const INVALID_GUEST_STATE: u64 = 33;
    pub const MWAIT: u64 = 36;
    pub const MONITOR: u64 = 39;
    pub const EPT_VIOLATION: u64 = 48;
    pub const EPT_MISCONFIGURATION: u64 = 49;
    pub const INVEPT: u64 = 50;
    pub const INVVPID: u64 = 53;
    pub const XSETBV: u64 = 55;
}

/// Event types of the interruption-information fields (Vol. 3C §25.8.3, §27.2.2).
const TYPE_EXTERNAL: u64 = 0;
const TYPE_NMI: u64 = 2;
const TYPE_HARDWARE_EXCEPTION: u64 = 3;
const VALID: u64 = 1 << 31;

/// Each CPU's VMXON region, and whether VMX is on there.
static VMXON: [Page; crate::firmware::MAX_CPUS] =
    [const { Page::new() }; crate::firmware::MAX_CPUS];
static ON: [AtomicBool; crate::firmware::MAX_CPUS] =
    [const { AtomicBool::new(false) }; crate::firmware::MAX_CPUS];

/// Turns VMX on on this CPU, `cpu`, if it is not on yet.
pub fn enable(cpu: usize) -> Result<(), VmxError> {
    let (Some(region), Some(on)) = (VMXON.get(cpu), ON.get(cpu)) else {
        return Err(VmxError::Unsupported("run more CPUs"));
    };
    if on.load(core::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    vmx::enable(region)?;
    // XSETBV exits on VMX and is done here for the guest (`xsetbv`): the host needs
    // CR4.OSXSAVE for it. XCR0 is then the guest's in the host too; the hypervisor uses no
    // extended state.
    if core::arch::x86_64::__cpuid(1).ecx & 1 << 26 != 0 {
        // SAFETY: the CPU has XSAVE; setting OSXSAVE only allows XSETBV and XGETBV.
        unsafe {
            asm!(
                "mov {t}, cr4",
                "or {t}, {bit}",
                "mov cr4, {t}",
                t = out(reg) _,
                bit = const 1u64 << 18,
                options(nomem, nostack)
            );
        }
    }
    on.store(true, core::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Which of the VMX features this hypervisor uses the CPU has: read from the capability
/// MSRs once (every CPU of a machine has the same, as Intel SDM Vol. 3D Appendix A expects
/// of software), then kept.
#[derive(Clone, Copy, Debug)]
struct Controls {
    pin: u32,
    primary: u32,
    secondary: u32,
    exit: u32,
    entry: u32,
    /// NMI-window exiting can be turned on (with virtual NMIs).
    nmi_window: bool,
    /// INVEPT of one context (else all contexts).
    single_context_invept: bool,
}

static CONTROLS: spin::Once<Result<Controls, VmxError>> = spin::Once::new();

impl Controls {
    /// The controls, read at the first call.
    fn get() -> Result<Self, VmxError> {
        *CONTROLS.call_once(Self::read)
    }

    fn read() -> Result<Self, VmxError> {
        let true_controls = usize::from(msr(IA32_VMX_BASIC) & 1 << 55 != 0);
        let capability2 = msr(PROCBASED2);
        let required2 = PROC2_EPT | PROC2_UNRESTRICTED;
        let secondary = adjust(
            required2 | PROC2_RDTSCP | PROC2_INVPCID | PROC2_XSAVES,
            capability2,
        );
        if secondary & required2 != required2 {
            return Err(VmxError::Unsupported("run an unrestricted guest with EPT"));
        }
        let pin_capability = msr(PINBASED[true_controls]);
        let pin = adjust(PIN_NMI_EXITING | PIN_VIRTUAL_NMIS, pin_capability);
        if pin & PIN_NMI_EXITING == 0 {
            return Err(VmxError::Unsupported("exit on NMIs"));
        }
        let primary_capability = msr(PROCBASED[true_controls]);
        let wanted = PROC_HLT
            | PROC_MWAIT
            | PROC_MONITOR
            | PROC_IO_BITMAPS
            | PROC_MSR_BITMAPS
            | PROC_SECONDARY;
        let primary = adjust(wanted, primary_capability) & !(PROC_CR3_LOAD | PROC_CR3_STORE)
            | (primary_capability as u32 & (PROC_CR3_LOAD | PROC_CR3_STORE));
        if primary & wanted != wanted {
            return Err(VmxError::Unsupported("use I/O and MSR bitmaps"));
        }
        let exit_wanted = EXIT_SAVE_DEBUG
            | EXIT_HOST_64
            | EXIT_SAVE_PAT
            | EXIT_LOAD_PAT
            | EXIT_SAVE_EFER
            | EXIT_LOAD_EFER;
        let exit = adjust(exit_wanted, msr(EXIT_CTLS[true_controls]));
        let entry_wanted = ENTRY_LOAD_DEBUG | ENTRY_LOAD_PAT | ENTRY_LOAD_EFER;
        let entry = adjust(entry_wanted, msr(ENTRY_CTLS[true_controls]));
        if exit & exit_wanted != exit_wanted || entry & entry_wanted != entry_wanted {
            return Err(VmxError::Unsupported(
                "switch EFER and PAT at entries and exits",
            ));
        }
        let nmi_window =
            (primary_capability >> 32) as u32 & PROC_NMI_WINDOW != 0 && pin & PIN_VIRTUAL_NMIS != 0;
        Ok(Self {
            pin,
            primary,
            secondary,
            exit,
            entry,
            nmi_window,
            // IA32_VMX_EPT_VPID_CAP bit 25: single-context INVEPT (bit 26: all-context).
            single_context_invept: msr(0x48c) & 1 << 25 != 0,
        })
    }
}

/// Whether the CPU lets a guest run RDTSCP, INVPCID and XSAVES (else CPUID must not offer
/// them: they would raise #UD).
pub fn guest_features() -> (bool, bool, bool) {
    let secondary = Controls::get().map_or(0, |controls| controls.secondary);
    (
        secondary & PROC2_RDTSCP != 0,
        secondary & PROC2_INVPCID != 0,
        secondary & PROC2_XSAVES != 0,
    )
}

/// The permission bitmaps of a VMX vCPU: the I/O bitmap (8 KiB, A then B: one bit per port,
/// as SVM's) and the MSR bitmap (4 KiB in VMX's layout).
#[derive(Clone, Copy, Debug)]
pub struct Bitmaps {
    /// The I/O bitmaps A and B, contiguous.
    pub io: u64,
    /// The MSR bitmap.
    pub msr: u64,
}

/// A VMX vCPU: the current VMCS of this CPU, and the guest's RAX (not in the VMCS).
#[derive(Debug)]
pub struct Vmcs {
    /// The VM-instruction error of a failed entry, reported with the exit information.
    failed: Option<u64>,
    /// An NMI for the guest that waits for the guest to unblock NMIs (NMI-window exiting).
    nmi_waiting: bool,
    rax: u64,
    launched: bool,
    flush: bool,
    eptp: u64,
}

impl Vmcs {
    /// Makes `page` this CPU's current VMCS, cleared.
    pub fn new(page: &'static Page) -> Result<Self, VmxError> {
        vmx::load(page)?;
        Ok(Self {
            failed: None,
            nmi_waiting: false,
            rax: 0,
            launched: false,
            flush: true,
            eptp: 0,
        })
    }

    /// A vCPU as the 32-bit entry of a Linux bzImage or of an inmate wants it: flat protected
    /// mode with paging off, `CS` = `code`, the data segments `data`, interrupts disabled, at
    /// `rip`, behind the EPT tables at `tables`. Exits on CPUID, HLT, NMIs, MONITOR and
    /// MWAIT, I/O and MSRs by `bitmaps`; interrupts go to the guest.
    pub fn reset_protected_mode(
        &mut self,
        rip: u64,
        (code, data): (u16, u16),
        tables: u64,
        bitmaps: Bitmaps,
    ) -> Result<(), VmxError> {
        self.reset(tables, bitmaps)?;
        for n in 0..6u64 {
            let (selector, access) = if n == 1 {
                (code, 0xc09b) // CS: 32-bit code, 4 KiB granularity, accessed
            } else {
                (data, 0xc093) // read/write data, accessed
            };
            vmx::write(GUEST_ES_SELECTOR + 2 * n, u64::from(selector));
            vmx::write(GUEST_ES_LIMIT + 2 * n, 0xffff_ffff);
            vmx::write(GUEST_ES_ACCESS + 2 * n, access);
            vmx::write(GUEST_ES_BASE + 2 * n, 0);
        }
        self.set_cr0(CR0_PE | 1 << 4);
        vmx::write(GUEST_RIP, rip);
        Ok(())
    }

    /// A vCPU as after INIT and a start-up IPI: real mode with `CS` = `segment` (base
    /// `segment << 4`), at `rip`; otherwise as [`reset_protected_mode`](Self::reset_protected_mode).
    pub fn reset_real_mode_at(
        &mut self,
        segment: u16,
        rip: u64,
        tables: u64,
        bitmaps: Bitmaps,
    ) -> Result<(), VmxError> {
        self.reset(tables, bitmaps)?;
        for n in 0..6u64 {
            let (selector, base, access) = if n == 1 {
                (segment, u64::from(segment) << 4, 0x9b)
            } else {
                (0, 0, 0x93)
            };
            vmx::write(GUEST_ES_SELECTOR + 2 * n, u64::from(selector));
            vmx::write(GUEST_ES_LIMIT + 2 * n, 0xffff);
            vmx::write(GUEST_ES_ACCESS + 2 * n, access);
            vmx::write(GUEST_ES_BASE + 2 * n, base);
        }
        // CD, NW and ET, as after INIT.
        self.set_cr0(0x6000_0010);
        vmx::write(GUEST_RIP, rip);
        Ok(())
    }

    /// What both resets share: controls, host state, LDTR, TR and descriptor tables, CR3
    /// and CR4 zero, EFER zero, RFLAGS with interrupts off, the power-on PAT.
    fn reset(&mut self, tables: u64, bitmaps: Bitmaps) -> Result<(), VmxError> {
        let controls = Controls::get()?;
        vmx::write(PIN_BASED, u64::from(controls.pin));
        vmx::write(PROC_BASED, u64::from(controls.primary));
        vmx::write(PROC_BASED2, u64::from(controls.secondary));
        vmx::write(EXIT_CONTROLS, u64::from(controls.exit));
        vmx::write(ENTRY_CONTROLS, u64::from(controls.entry & !ENTRY_IA32E));
        vmx::write(EXCEPTION_BITMAP, 0);
        vmx::write(field::PF_ERROR_MASK, 0);
        vmx::write(field::PF_ERROR_MATCH, 0);
        vmx::write(field::CR3_TARGET_COUNT, 0);
        vmx::write(field::EXIT_MSR_STORE_COUNT, 0);
        vmx::write(field::EXIT_MSR_LOAD_COUNT, 0);
        vmx::write(field::ENTRY_MSR_LOAD_COUNT, 0);
        vmx::write(field::ENTRY_INTERRUPTION, 0);
        vmx::write(field::IO_BITMAP_A, bitmaps.io);
        vmx::write(field::IO_BITMAP_B, bitmaps.io + 0x1000);
        vmx::write(field::MSR_BITMAP, bitmaps.msr);
        // Write-back walks, 4 levels (the format's `eptp`).
        self.eptp = (tables & 0x000f_ffff_ffff_f000) | 6 | 3 << 3;
        vmx::write(EPT_POINTER, self.eptp);
        vmx::write(VMCS_LINK_POINTER, u64::MAX);
        // The bits VMX operation fixes are the hypervisor's; the guest reads its own.
        vmx::write(field::CR0_MASK, CR0_NE);
        vmx::write(field::CR4_MASK, CR4_VMXE);
        vmx::write(field::CR4_SHADOW, 0);
        vmx::write(GUEST_CR4, msr(IA32_VMX_CR4_FIXED0) | CR4_VMXE);
        vmx::write(GUEST_CR3, 0);
        vmx::write(field::GUEST_EFER, 0);
        vmx::write(field::GUEST_PAT, 0x0007_0406_0007_0406);
        vmx::write(field::GUEST_LDTR_SELECTOR, 0);
        // LDTR unusable; TR a busy 32-bit TSS (what VM entry requires of TR).
        vmx::write(GUEST_ES_LIMIT + 12, 0xffff);
        vmx::write(GUEST_ES_ACCESS + 12, 1 << 16);
        vmx::write(GUEST_ES_BASE + 12, 0);
        vmx::write(GUEST_ES_SELECTOR + 14, 0);
        vmx::write(GUEST_ES_LIMIT + 14, 0xffff);
        vmx::write(GUEST_ES_ACCESS + 14, 0x8b);
        vmx::write(GUEST_ES_BASE + 14, 0);
        vmx::write(GUEST_GDTR_LIMIT, 0xffff);
        vmx::write(GUEST_IDTR_LIMIT, 0xffff);
        vmx::write(GUEST_GDTR_BASE, 0);
        vmx::write(GUEST_IDTR_BASE, 0);
        vmx::write(GUEST_DR7, 0x400);
        vmx::write(GUEST_RSP, 0);
        vmx::write(GUEST_RFLAGS, 0x2);
        vmx::write(GUEST_PENDING_DEBUG, 0);
        vmx::write(GUEST_INTERRUPTIBILITY, 0);
        vmx::write(GUEST_ACTIVITY, 0);
        vmx::write(GUEST_SYSENTER_CS, 0);
        vmx::write(field::GUEST_SYSENTER_ESP, 0);
        vmx::write(field::GUEST_SYSENTER_EIP, 0);
        vmx::write(GUEST_DEBUGCTL, 0);
        self.host_state();
        self.rax = 0;
        self.nmi_waiting = false;
        self.launched = false;
        self.flush = true;
        Ok(())
    }

    /// The host: [`vmx::write_host_state`], with the MSRs the exit loads and SYSENTER off.
    fn host_state(&self) {
        vmx::write_host_state();
        vmx::write(field::HOST_SYSENTER_CS, 0);
        vmx::write(field::HOST_SYSENTER_ESP, 0);
        vmx::write(field::HOST_SYSENTER_EIP, 0);
        vmx::write(field::HOST_PAT, msr(IA32_PAT));
        vmx::write(field::HOST_EFER, msr(IA32_EFER));
    }

    /// Sets the guest's CR0 as it sees it (the read shadow) and as it runs (with the bits VMX
    /// fixes: NE, and PE and PG only if the guest has them, unrestricted).
    fn set_cr0(&mut self, cr0: u64) {
        let fixed = msr(IA32_VMX_CR0_FIXED0) & !(CR0_PE | CR0_PG);
        vmx::write(field::CR0_SHADOW, cr0 & CR0_NE);
        vmx::write(GUEST_CR0, cr0 | fixed);
    }

    /// Runs the guest until its next exit that the common handlers take; CR0 and CR4 writes
    /// and XSETBV are done here. `abort` is read right before each entry, as with SVM: if it
    /// is set, the guest is not entered and `None` is returned (an NMI that arrives between
    /// the read and the entry restarts at the read, see `wait`).
    pub fn enter(&mut self, regs: &mut GuestRegisters, abort: &AtomicBool) -> Option<Exit> {
        loop {
            if self.flush {
                invept(self.eptp);
                self.flush = false;
            }
            let status = enter_guest(regs, &mut self.rax, abort, self.launched);
            match status {
                1 => return None,
                0 => {}
                _ => {
                    self.failed = Some(vmx::read(INSTRUCTION_ERROR));
                    return Some(Exit::Invalid);
                }
            }
            self.launched = true;
            let basic = vmx::read(EXIT_REASON);
            if basic & 1 << 31 != 0 {
                return Some(Exit::Invalid);
            }
            match basic & 0xffff {
                reason::EXCEPTION_OR_NMI => {
                    let info = vmx::read(field::EXIT_INTERRUPTION);
                    if info & VALID != 0 && (info >> 8) & 7 == TYPE_NMI {
                        unblock_nmis();
                        return Some(Exit::Nmi);
                    }
                    return Some(Exit::Other(0));
                }
                reason::CR_ACCESS => {
                    if !self.control_register(regs) {
                        return Some(Exit::Other(reason::CR_ACCESS));
                    }
                }
                reason::XSETBV => self.xsetbv(regs),
                // The guest unblocked NMIs: the waiting one goes in now.
                reason::NMI_WINDOW => {
                    self.set_nmi_window(false);
                    if core::mem::take(&mut self.nmi_waiting) {
                        self.inject_nmi();
                    }
                }
                // INVD drops caches without writing them back: done as WBINVD.
                reason::INVD => {
                    // SAFETY: writing back and invalidating caches loses nothing.
                    unsafe { asm!("wbinvd", options(nostack)) };
                    self.skip(2);
                }
                other => return Some(self.decode(other)),
            }
        }
    }

    /// A `MOV` to or from CR0 or CR4 that touched a bit of the hypervisor's: done with that
    /// bit kept. Returns whether it was one.
    fn control_register(&mut self, regs: &mut GuestRegisters) -> bool {
        let qualification = vmx::read(EXIT_QUALIFICATION);
        let (number, kind, register) = (
            qualification & 0xf,
            (qualification >> 4) & 3,
            ((qualification >> 8) & 0xf) as u8,
        );
        // Only MOV to CR (type 0) exits with these masks.
        if kind != 0 {
            return false;
        }
        let value = read_register(self, regs, register);
        match number {
            0 => {
                if value & CR0_PG != 0 && value & CR0_PE == 0 || value >> 32 != 0 {
                    Guest::inject_exception(self, 13, Some(0));
                    return true;
                }
                self.set_cr0(value);
                // Paging with EFER.LME on enters IA-32e mode: EFER.LMA and the entry
                // control follow (Vol. 3C §25.8.1: the processor does not set LMA itself
                // for a CR0 write the hypervisor emulates).
                let efer = vmx::read(field::GUEST_EFER);
                let entry = vmx::read(ENTRY_CONTROLS);
                if value & CR0_PG != 0 && efer & 1 << 8 != 0 {
                    vmx::write(field::GUEST_EFER, efer | 1 << 10);
                    vmx::write(ENTRY_CONTROLS, entry | u64::from(ENTRY_IA32E));
                } else if value & CR0_PG == 0 {
                    vmx::write(field::GUEST_EFER, efer & !(1 << 10));
                    vmx::write(ENTRY_CONTROLS, entry & !u64::from(ENTRY_IA32E));
                }
            }
            4 => {
                if value & CR4_VMXE != 0 || value & !msr(IA32_VMX_CR4_FIXED1) & !CR4_VMXE != 0 {
                    Guest::inject_exception(self, 13, Some(0));
                    return true;
                }
                vmx::write(field::CR4_SHADOW, value & CR4_VMXE);
                vmx::write(GUEST_CR4, value | CR4_VMXE);
            }
            _ => return false,
        }
        let length = vmx::read(EXIT_INSTRUCTION_LENGTH);
        self.skip(length as usize);
        true
    }

    /// XSETBV: XCR0 set as asked if the CPU supports every bit, x87 stays on, and AVX comes
    /// with SSE (else #GP, as the instruction itself checks).
    fn xsetbv(&mut self, regs: &GuestRegisters) {
        let value = (regs.rdx & 0xffff_ffff) << 32 | (self.rax & 0xffff_ffff);
        let supported = {
            let leaf = core::arch::x86_64::__cpuid_count(0xd, 0);
            u64::from(leaf.edx) << 32 | u64::from(leaf.eax)
        };
        let valid = regs.rcx as u32 == 0
            && value & !supported == 0
            && value & 1 != 0
            && (value & 1 << 2 == 0 || value & 1 << 1 != 0);
        if !valid {
            Guest::inject_exception(self, 13, Some(0));
            return;
        }
        // SAFETY: CR4.OSXSAVE is the guest's and XSETBV exits only with it set; the value
        // passed the checks XSETBV makes. The hypervisor uses no extended state.
        unsafe {
            asm!("xsetbv", in("ecx") 0, in("eax") value as u32, in("edx") (value >> 32) as u32,
                 options(nomem, nostack));
        }
        self.skip(3);
    }

    /// Turns NMI-window exiting on or off; false if the CPU cannot (no virtual NMIs).
    fn set_nmi_window(&mut self, on: bool) -> bool {
        if !Controls::get().is_ok_and(|controls| controls.nmi_window) {
            return false;
        }
        let primary = vmx::read(PROC_BASED);
        let bit = u64::from(PROC_NMI_WINDOW);
        vmx::write(PROC_BASED, if on { primary | bit } else { primary & !bit });
        true
    }

    fn decode(&self, basic: u64) -> Exit {
        match basic {
            reason::EXTERNAL_INTERRUPT => Exit::Interrupt,
            reason::TRIPLE_FAULT => Exit::Shutdown,
            reason::INIT => Exit::Init,
            reason::CPUID => Exit::Cpuid,
            reason::HLT => Exit::Hlt,
            reason::IO => {
                // Bits 2:0 size - 1, bit 3 IN, bit 4 string, bits 31:16 the port.
                let q = vmx::read(EXIT_QUALIFICATION);
                Exit::Io(IoExit {
                    port: (q >> 16) as u16,
                    size: (q & 7) as u8 + 1,
                    input: q & 1 << 3 != 0,
                    string: q & 1 << 4 != 0,
                    len: vmx::read(EXIT_INSTRUCTION_LENGTH) as u8,
                })
            }
            reason::RDMSR => Exit::Msr { write: false },
            reason::WRMSR => Exit::Msr { write: true },
            reason::EPT_VIOLATION => {
                // Bit 0 read, bit 1 write, bit 2 fetch.
                let q = vmx::read(EXIT_QUALIFICATION);
                Exit::Fault(NestedFault {
                    gpa: vmx::read(GUEST_PHYSICAL_ADDRESS),
                    write: q & 1 << 1 != 0,
                    fetch: q & 1 << 2 != 0,
                    // VMX does not say; the CPL does (SS's DPL).
                    user: (vmx::read(GUEST_ES_ACCESS + 4) >> 5) & 3 == 3,
                    raw: q,
                })
            }
            reason::VMCALL..=reason::VMXON | reason::INVEPT | reason::INVVPID => {
                Exit::Virtualization
            }
            reason::MWAIT | reason::MONITOR => Exit::Virtualization,
            reason::INVALID_GUEST_STATE => Exit::Invalid,
            reason::EPT_MISCONFIGURATION => Exit::Other(reason::EPT_MISCONFIGURATION),
            reason::SIPI => Exit::Other(reason::SIPI),
            other => Exit::Other(other),
        }
    }
}

/// General-purpose register `n` (0 RAX ... 15 R15) of the vCPU.
fn read_register(vmcs: &Vmcs, regs: &GuestRegisters, n: u8) -> u64 {
    match n {
        0 => vmcs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => vmx::read(GUEST_RSP),
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        n => regs.r[usize::from(n & 7)],
    }
}

impl Vcpu for Vmcs {
    fn run(&mut self, regs: &mut GuestRegisters, abort: &AtomicBool) -> Option<Exit> {
        self.enter(regs, abort)
    }
}

impl Guest for Vmcs {
    fn exit(&self) -> Exit {
        self.decode(vmx::read(EXIT_REASON) & 0xffff)
    }

    fn rip(&self) -> u64 {
        vmx::read(GUEST_RIP)
    }

    fn set_rip(&mut self, rip: u64) {
        vmx::write(GUEST_RIP, rip);
    }

    fn rax(&self) -> u64 {
        self.rax
    }

    fn set_rax(&mut self, rax: u64) {
        self.rax = rax;
    }

    fn rsp(&self) -> u64 {
        vmx::read(GUEST_RSP)
    }

    fn set_rsp(&mut self, rsp: u64) {
        vmx::write(GUEST_RSP, rsp);
    }

    fn rflags(&self) -> u64 {
        vmx::read(GUEST_RFLAGS)
    }

    fn control_registers(&self) -> [u64; 4] {
        let cr2: u64;
        // SAFETY: reading CR2 has no effect; VMX leaves the guest's CR2 in the register.
        unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
        let cr0 = vmx::read(GUEST_CR0) & !CR0_NE | vmx::read(field::CR0_SHADOW) & CR0_NE;
        let cr4 = vmx::read(GUEST_CR4) & !CR4_VMXE;
        [cr0, cr2, vmx::read(GUEST_CR3), cr4]
    }

    fn efer(&self) -> u64 {
        vmx::read(field::GUEST_EFER)
    }

    fn set_efer(&mut self, efer: u64) {
        // LMA is the processor's: active when paging is on with LME.
        let paging = vmx::read(GUEST_CR0) & CR0_PG != 0;
        let lma = paging && efer & 1 << 8 != 0;
        let efer = if lma {
            efer | 1 << 10
        } else {
            efer & !(1 << 10)
        };
        vmx::write(field::GUEST_EFER, efer);
        let entry = vmx::read(ENTRY_CONTROLS);
        let ia32e = u64::from(ENTRY_IA32E);
        vmx::write(
            ENTRY_CONTROLS,
            if lma { entry | ia32e } else { entry & !ia32e },
        );
    }

    fn cpl(&self) -> u8 {
        // SS's DPL is the CPL (Vol. 3C §26.3.1.5).
        ((vmx::read(GUEST_ES_ACCESS + 4) >> 5) & 3) as u8
    }

    fn cs_selector(&self) -> u16 {
        vmx::read(field::GUEST_CS_SELECTOR) as u16
    }

    fn in_64_bit_code(&self) -> bool {
        vmx::read(field::GUEST_EFER) & 1 << 10 != 0
            && vmx::read(field::GUEST_CS_ACCESS) & 1 << 13 != 0
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        let mut info = u64::from(vector) | TYPE_HARDWARE_EXCEPTION << 8 | VALID;
        if let Some(code) = error_code {
            info |= 1 << 11;
            vmx::write(field::ENTRY_ERROR_CODE, u64::from(code));
        }
        vmx::write(field::ENTRY_INTERRUPTION, info);
    }

    fn inject_nmi(&mut self) {
        // Blocked by NMI (bit 3), MOV SS (1) or STI (0): VM entry would refuse the injection
        // (Vol. 3C §27.3.1.5). It waits for the guest's NMI window instead, if the CPU has
        // one (with virtual NMIs); without, it is dropped as a second NMI while one is
        // blocked would be.
        let interruptibility = vmx::read(GUEST_INTERRUPTIBILITY);
        if interruptibility & 0b1011 != 0 || self.event_pending() {
            if self.set_nmi_window(true) {
                self.nmi_waiting = true;
            }
            return;
        }
        vmx::write(field::ENTRY_INTERRUPTION, 2 | TYPE_NMI << 8 | VALID);
    }

    fn event_pending(&self) -> bool {
        vmx::read(field::ENTRY_INTERRUPTION) & VALID != 0
    }

    fn reinject_interrupted_event(&mut self) {
        // A successful entry clears the valid bit; what the exit interrupted goes back.
        let event = vmx::read(field::IDT_VECTORING);
        if event & VALID == 0 {
            vmx::write(field::ENTRY_INTERRUPTION, 0);
            return;
        }
        let kind = (event >> 8) & 7;
        // Software interrupts and exceptions (types 4 to 6) run again from their
        // instruction.
        if !matches!(kind, TYPE_EXTERNAL | TYPE_NMI | TYPE_HARDWARE_EXCEPTION) {
            vmx::write(field::ENTRY_INTERRUPTION, 0);
            return;
        }
        if event & 1 << 11 != 0 {
            vmx::write(
                field::ENTRY_ERROR_CODE,
                vmx::read(field::IDT_VECTORING_ERROR),
            );
        }
        vmx::write(field::ENTRY_INTERRUPTION, event & !(1 << 12));
        vmx::write(field::ENTRY_INSTRUCTION_LENGTH, 0);
    }

    fn set_hlt_exiting(&mut self, exiting: bool) {
        let primary = vmx::read(PROC_BASED);
        let hlt = u64::from(PROC_HLT);
        vmx::write(
            PROC_BASED,
            if exiting {
                primary | hlt
            } else {
                primary & !hlt
            },
        );
    }

    fn flush_tlb_at_entry(&mut self, flush: bool) {
        self.flush |= flush;
    }

    fn fault_address(&self) -> u64 {
        vmx::read(GUEST_PHYSICAL_ADDRESS)
    }

    fn exit_information(&self) -> [u64; 2] {
        if let Some(error) = self.failed {
            // VMLAUNCH or VMRESUME failed: the VM-instruction error, and no exit reason.
            return [error, u64::MAX];
        }
        [
            vmx::read(EXIT_QUALIFICATION),
            vmx::read(GUEST_PHYSICAL_ADDRESS),
        ]
    }
}

/// INVEPT, single context (type 1) for `eptp`, or all contexts if the CPU lacks the former.
fn invept(eptp: u64) {
    let descriptor = [eptp, 0u64];
    let single = Controls::get().is_ok_and(|controls| controls.single_context_invept);
    let kind: u64 = if single { 1 } else { 2 };
    // SAFETY: VMX is on; the descriptor is 16 bytes on the stack; INVEPT only drops cached
    // translations.
    unsafe {
        asm!("invept {}, [{}]", in(reg) kind, in(reg) descriptor.as_ptr(), options(nostack));
    }
}

/// After an NMI exit NMIs stay blocked until an IRET (Vol. 3C §28.?): an `IRETQ` to the next
/// instruction lifts the block, so that the next kick wakes this CPU.
fn unblock_nmis() {
    // SAFETY: builds an interrupt frame for the next instruction with this CPU's own SS, RSP,
    // RFLAGS and CS, and returns through it: nothing changes but NMI blocking.
    unsafe {
        asm!(
            "mov {tmp:r}, rsp",
            "push 0x10",
            "push {tmp:r}",
            "pushfq",
            "push 0x08",
            "lea {tmp:r}, [rip + 2f]",
            "push {tmp:r}",
            "iretq",
            "2:",
            tmp = out(reg) _,
        );
    }
}

global_asm!(
    r#"
    .section .text.vmx_enter, "ax"
    // enter_guest(regs: rdi, rax slot: rsi, abort: rdx, launched: ecx) -> eax
    //   0 exited, 1 aborted, 2 the entry failed.
    // Stack while the guest runs (host RSP): [regs] [rax slot] [abort] [launched], then the
    // host's callee-saved registers.
    .global cellvisor_vmx_enter
cellvisor_vmx_enter:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rcx
    push rdx
    push rsi
    push rdi
    mov rax, 0x6c14
    vmwrite rax, rsp
    lea rdx, [rip + cellvisor_vmx_exited]
    mov rax, 0x6c16
    vmwrite rax, rdx
    // From here to the VMLAUNCH or VMRESUME everything is reloaded from the stack: an NMI in
    // between restarts at the check (`wait`'s NMI handler), so a kick is never missed.
    .global cellvisor_vmx_check
cellvisor_vmx_check:
    mov rdx, qword ptr [rsp + 16]
    cmp byte ptr [rdx], 0
    jne 3f
    mov rsi, qword ptr [rsp + 8]
    mov rax, qword ptr [rsi]
    mov rdi, qword ptr [rsp]
    mov rbx, qword ptr [rdi + 0]
    mov rcx, qword ptr [rdi + 8]
    mov rdx, qword ptr [rdi + 16]
    mov rsi, qword ptr [rdi + 24]
    mov rbp, qword ptr [rdi + 40]
    mov r8, qword ptr [rdi + 48]
    mov r9, qword ptr [rdi + 56]
    mov r10, qword ptr [rdi + 64]
    mov r11, qword ptr [rdi + 72]
    mov r12, qword ptr [rdi + 80]
    mov r13, qword ptr [rdi + 88]
    mov r14, qword ptr [rdi + 96]
    mov r15, qword ptr [rdi + 104]
    cmp byte ptr [rsp + 24], 0
    mov rdi, qword ptr [rdi + 32]
    jne 4f
    vmlaunch
    jmp 5f
4:
    vmresume
    .global cellvisor_vmx_check_end
cellvisor_vmx_check_end:
5:
    // The entry failed: the guest's values are in the registers; the host's come back.
    add rsp, 32
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    mov eax, 2
    ret
3:
    add rsp, 32
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    mov eax, 1
    ret

cellvisor_vmx_exited:
    push rdi
    mov rdi, qword ptr [rsp + 8]
    mov qword ptr [rdi + 0], rbx
    mov qword ptr [rdi + 8], rcx
    mov qword ptr [rdi + 16], rdx
    mov qword ptr [rdi + 24], rsi
    mov qword ptr [rdi + 40], rbp
    mov qword ptr [rdi + 48], r8
    mov qword ptr [rdi + 56], r9
    mov qword ptr [rdi + 64], r10
    mov qword ptr [rdi + 72], r11
    mov qword ptr [rdi + 80], r12
    mov qword ptr [rdi + 88], r13
    mov qword ptr [rdi + 96], r14
    mov qword ptr [rdi + 104], r15
    pop qword ptr [rdi + 32]
    mov rsi, qword ptr [rsp + 8]
    mov qword ptr [rsi], rax
    add rsp, 32
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    xor eax, eax
    ret
"#
);

extern "C" {
    fn cellvisor_vmx_enter(
        regs: *mut GuestRegisters,
        rax: *mut u64,
        abort: *const u8,
        launched: u32,
    ) -> u32;
}

/// Enters the current VMCS's guest; see `cellvisor_vmx_enter`.
fn enter_guest(
    regs: &mut GuestRegisters,
    rax: &mut u64,
    abort: &AtomicBool,
    launched: bool,
) -> u32 {
    // SAFETY: a VMCS is current and set up (`Vmcs::reset_*`, which wrote the host state);
    // the function keeps the C ABI: it saves and restores the callee-saved registers around
    // the guest, writes only `regs` and `rax`, reads `abort`, and returns with RSP as it was
    // (the VMCS's host RSP is its own stack pointer).
    unsafe {
        cellvisor_vmx_enter(
            regs,
            rax,
            abort.as_ptr().cast_const().cast(),
            u32::from(launched),
        )
    }
}
