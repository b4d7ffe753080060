//! AMD SVM: turning it on, the VMCB, and one world switch (AMD APM Vol. 2, chapter 15
//! "Secure Virtual Machine"; VMCB layout in Appendix B).

use core::fmt;
use core::sync::atomic::AtomicBool;

use x86_64::registers::model_specific::Msr;

use crate::guest::{Exit, IoExit, NestedFault};
use crate::page::Page;

/// `EFER` and its SVM enable bit (APM 15.4).
pub const EFER: u32 = 0xc000_0080;
/// `EFER.SVME`.
pub const EFER_SVME: u64 = 1 << 12;
/// `VM_CR`: bit 4, SVMDIS, set by firmware that locks SVM off (APM 15.30.1).
const VM_CR: u32 = 0xc001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;
/// `VM_HSAVE_PA`: where VMRUN saves the host's state (APM 15.30.4).
const VM_HSAVE_PA: u32 = 0xc001_0117;

/// Offsets in the VMCB (APM Appendix B, tables B-1 and B-2).
pub mod offset {
    /// Intercept vector 3: INTR (0) ... CPUID (18), HLT (24), IOIO (27), MSR (28),
    /// shutdown (31).
    pub const INTERCEPT_MISC1: usize = 0x00c;
    /// Intercept vector 4: VMRUN (0, must be set), VMMCALL (1).
    pub const INTERCEPT_MISC2: usize = 0x010;
    /// The I/O permission map's physical address (12 KiB, with the IOIO intercept).
    pub const IOPM_BASE_PA: usize = 0x040;
    /// The MSR permission map's physical address (8 KiB, with the MSR intercept).
    pub const MSRPM_BASE_PA: usize = 0x048;
    /// The guest's address space ID (non-zero).
    pub const GUEST_ASID: usize = 0x058;
    /// TLB control: 1 flushes every address space on VMRUN.
    pub const TLB_CONTROL: usize = 0x05c;
    /// Exit code.
    pub const EXITCODE: usize = 0x070;
    /// Exit information 1 and 2.
    pub const EXITINFO1: usize = 0x078;
    /// Exit information 2.
    pub const EXITINFO2: usize = 0x080;
    /// The event the guest was delivering when it exited (`EVENTINJ`'s format, APM 15.7.2).
    pub const EXITINTINFO: usize = 0x088;
    /// Bit 0: nested paging.
    pub const NP_ENABLE: usize = 0x090;
    /// An event to inject on the next VMRUN (APM 15.20): vector (7:0), type (10:8), error
    /// code valid (11), valid (31), error code (63:32).
    pub const EVENTINJ: usize = 0x0a8;
    /// The nested page tables' root.
    pub const N_CR3: usize = 0x0b0;
    /// The instruction after the one that exited (with the NRIP-save feature).
    pub const NRIP: usize = 0x0c8;
    /// Segment registers: selector (u16), attributes (u16), limit (u32), base (u64).
    pub const ES: usize = 0x400;
    /// Code segment.
    pub const CS: usize = 0x410;
    /// Stack segment.
    pub const SS: usize = 0x420;
    /// Data segment.
    pub const DS: usize = 0x430;
    /// FS.
    pub const FS: usize = 0x440;
    /// GS.
    pub const GS: usize = 0x450;
    /// GDTR (limit and base only).
    pub const GDTR: usize = 0x460;
    /// LDTR.
    pub const LDTR: usize = 0x470;
    /// IDTR (limit and base only).
    pub const IDTR: usize = 0x480;
    /// TR.
    pub const TR: usize = 0x490;
    /// Current privilege level.
    pub const CPL: usize = 0x4cb;
    /// Guest EFER (SVME must be set).
    pub const EFER: usize = 0x4d0;
    /// Guest CR4.
    pub const CR4: usize = 0x548;
    /// Guest CR3.
    pub const CR3: usize = 0x550;
    /// Guest CR0.
    pub const CR0: usize = 0x558;
    /// Guest RFLAGS.
    pub const RFLAGS: usize = 0x570;
    /// Guest RIP.
    pub const RIP: usize = 0x578;
    /// Guest RSP.
    pub const RSP: usize = 0x5d8;
    /// Guest RAX.
    pub const RAX: usize = 0x5f8;
    /// Guest CR2.
    pub const CR2: usize = 0x640;
    /// Guest PAT.
    pub const G_PAT: usize = 0x668;
}

/// Segment attributes in the VMCB's 12-bit form (APM 15.5.1): type (3:0), S (4), DPL (6:5),
/// P (7), AVL (8), L (9), D/B (10), G (11).
pub mod attributes {
    /// A 4 GiB flat 32-bit code segment, execute/read, accessed.
    pub const CODE32: u16 = 0xc9b;
    /// A 4 GiB flat 32-bit data segment, read/write, accessed.
    pub const DATA32: u16 = 0xc93;
    /// A busy 32-bit TSS.
    pub const TSS_BUSY: u16 = 0x8b;
    /// An LDT.
    pub const LDT: u16 = 0x82;
}

/// Intercept bits of [`offset::INTERCEPT_MISC1`]: a physical interrupt.
pub const INTERCEPT_INTR: u32 = 1 << 0;
/// An NMI.
pub const INTERCEPT_NMI: u32 = 1 << 1;
/// An INIT signal.
pub const INTERCEPT_INIT: u32 = 1 << 3;
/// CPUID.
pub const INTERCEPT_CPUID: u32 = 1 << 18;
/// IN and OUT, as the I/O permission map says.
pub const INTERCEPT_IOIO: u32 = 1 << 27;
/// RDMSR and WRMSR, as the MSR permission map says.
pub const INTERCEPT_MSR: u32 = 1 << 28;
/// HLT.
pub const INTERCEPT_HLT: u32 = 1 << 24;
/// Shutdown (a triple fault in the guest).
pub const INTERCEPT_SHUTDOWN: u32 = 1 << 31;
/// VMRUN, in [`offset::INTERCEPT_MISC2`]: required by VMRUN's checks.
pub const INTERCEPT_VMRUN: u32 = 1 << 0;

/// Why the guest exited: the VMCB's exit code (APM Appendix C).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ExitCode(pub u64);

impl ExitCode {
    /// A physical interrupt.
    pub const INTR: Self = Self(0x60);
    /// An NMI.
    pub const NMI: Self = Self(0x61);
    /// An INIT signal.
    pub const INIT: Self = Self(0x63);
    /// CPUID.
    pub const CPUID: Self = Self(0x72);
    /// IN or OUT (EXITINFO1: bit 0 IN, bits 6:4 the size, 31:16 the port; EXITINFO2: the
    /// next RIP).
    pub const IOIO: Self = Self(0x7b);
    /// RDMSR or WRMSR (EXITINFO1: 1 for WRMSR).
    pub const MSR: Self = Self(0x7c);
    /// HLT.
    pub const HLT: Self = Self(0x78);
    /// Shutdown.
    pub const SHUTDOWN: Self = Self(0x7f);
    /// VMRUN in the guest.
    pub const VMRUN: Self = Self(0x80);
    /// VMMCALL in the guest.
    pub const VMMCALL: Self = Self(0x81);
    /// A nested page fault.
    pub const NPF: Self = Self(0x400);
    /// VMRUN refused the VMCB's state.
    pub const INVALID: Self = Self(u64::MAX);
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::INTR => "interrupt",
            Self::NMI => "NMI",
            Self::INIT => "INIT",
            Self::CPUID => "CPUID",
            Self::IOIO => "I/O",
            Self::MSR => "MSR",
            Self::HLT => "HLT",
            Self::SHUTDOWN => "shutdown",
            Self::NPF => "nested page fault",
            Self::VMRUN => "VMRUN",
            Self::VMMCALL => "VMMCALL",
            Self::INVALID => "invalid guest state",
            _ => return write!(f, "exit code {:#x}", self.0),
        };
        f.write_str(name)
    }
}

/// Why SVM could not be turned on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EnableError {
    /// The firmware locked it off (`VM_CR.SVMDIS`).
    DisabledByFirmware,
}

impl fmt::Display for EnableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DisabledByFirmware => {
                f.write_str("SVM is disabled by the firmware (VM_CR.SVMDIS)")
            }
        }
    }
}

/// Turns SVM on on this CPU, with `host_save` as its host save area.
pub fn enable(host_save: &'static Page) -> Result<(), EnableError> {
    // SAFETY: VM_CR exists on every CPU with SVM (checked by the caller with CPUID).
    let vm_cr = unsafe { Msr::new(VM_CR).read() };
    if vm_cr & VM_CR_SVMDIS != 0 {
        return Err(EnableError::DisabledByFirmware);
    }
    let mut efer = Msr::new(EFER);
    // SAFETY: setting EFER.SVME only enables the SVM instructions; the host save area is a
    // page of the hypervisor's that nothing else uses.
    unsafe {
        let value = efer.read();
        efer.write(value | EFER_SVME);
        Msr::new(VM_HSAVE_PA).write(host_save.address());
    }
    Ok(())
}

pub use crate::guest::GuestRegisters;

/// A VMCB: typed accessors over the page.
pub struct Vmcb<'a> {
    page: &'a Page,
    /// Where [`Vcpu::run`](crate::guest::Vcpu::run) keeps the host's state.
    host: Option<&'a Page>,
}

impl fmt::Debug for Vmcb<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vmcb({:#x})", self.page.address())
    }
}

macro_rules! accessors {
    ($($get:ident, $set:ident: $t:ty;)*) => {$(
        /// Reads a field.
        pub fn $get(&self, offset: usize) -> $t {
            assert!(offset + size_of::<$t>() <= 4096);
            // SAFETY: inside the page (checked); the CPU writes the VMCB only during VMRUN,
            // which does not overlap with this (one CPU owns the VMCB).
            unsafe { (self.page.0.get().cast::<u8>().add(offset).cast::<$t>()).read_unaligned() }
        }

        /// Writes a field.
        pub fn $set(&mut self, offset: usize, value: $t) {
            assert!(offset + size_of::<$t>() <= 4096);
            // SAFETY: as for reads.
            unsafe { (self.page.0.get().cast::<u8>().add(offset).cast::<$t>()).write_unaligned(value) }
        }
    )*};
}

impl<'a> Vmcb<'a> {
    /// The VMCB in `page`, zeroed.
    pub fn new(page: &'a Page) -> Self {
        // SAFETY: the page is this VMCB's alone.
        unsafe { page.0.get().write([0; 4096]) };
        Self { page, host: None }
    }

    /// The same VMCB, with `host` as the page where [`Vcpu::run`](crate::guest::Vcpu::run)
    /// keeps the host's state meanwhile.
    pub fn with_host_save(self, host: &'a Page) -> Self {
        Self {
            host: Some(host),
            ..self
        }
    }

    accessors! {
        u8_at, set_u8: u8;
        u16_at, set_u16: u16;
        u32_at, set_u32: u32;
        u64_at, set_u64: u64;
    }

    /// Sets a segment register: selector, attributes (APM's 12-bit form), limit, base.
    pub fn set_segment(
        &mut self,
        at: usize,
        selector: u16,
        attributes: u16,
        limit: u32,
        base: u64,
    ) {
        self.set_u16(at, selector);
        self.set_u16(at + 2, attributes);
        self.set_u32(at + 4, limit);
        self.set_u64(at + 8, base);
    }

    /// A vCPU as after INIT, in real mode at `rip` (CS base 0), with nested paging from
    /// `nested_cr3`, address space `asid`, and exits on CPUID, HLT and shutdown.
    pub fn reset_real_mode(&mut self, rip: u64, nested_cr3: u64, asid: u32) {
        self.reset_real_mode_at(0, rip, nested_cr3, asid);
    }

    /// [`reset_real_mode`](Self::reset_real_mode) with `CS` = `segment` (its base
    /// `segment << 4`): where a start-up IPI of vector `v` starts a CPU (`segment` = `v << 8`,
    /// `rip` 0).
    pub fn reset_real_mode_at(&mut self, segment: u16, rip: u64, nested_cr3: u64, asid: u32) {
        use offset::*;
        self.set_u32(
            INTERCEPT_MISC1,
            INTERCEPT_CPUID | INTERCEPT_HLT | INTERCEPT_SHUTDOWN,
        );
        self.set_u32(INTERCEPT_MISC2, INTERCEPT_VMRUN);
        self.set_u32(GUEST_ASID, asid);
        self.set_u64(NP_ENABLE, 1);
        self.set_u64(N_CR3, nested_cr3);
        // Present, accessed code (read/execute) and data (read/write) segments.
        self.set_segment(CS, segment, 0x9b, 0xffff, u64::from(segment) << 4);
        for data in [ES, SS, DS, FS, GS] {
            self.set_segment(data, 0, 0x93, 0xffff, 0);
        }
        // CD, NW and ET, as after INIT.
        self.reset_common(rip, 0x6000_0010);
    }

    /// What every reset shares: descriptor tables empty, LDT and a busy TSS, CPL 0, EFER with
    /// SVME alone, `cr0`, no paging, interrupts off, at `rip`, the power-on PAT, and every
    /// address space flushed on the next VMRUN.
    fn reset_common(&mut self, rip: u64, cr0: u64) {
        use offset::*;
        self.set_segment(GDTR, 0, 0, 0xffff, 0);
        self.set_segment(IDTR, 0, 0, 0xffff, 0);
        self.set_segment(LDTR, 0, attributes::LDT, 0xffff, 0);
        self.set_segment(TR, 0, attributes::TSS_BUSY, 0xffff, 0);
        self.set_u8(CPL, 0);
        self.set_u64(offset::EFER, EFER_SVME);
        self.set_u64(CR0, cr0);
        self.set_u64(CR3, 0);
        self.set_u64(CR4, 0);
        self.set_u64(RFLAGS, 0x2);
        self.set_u64(RIP, rip);
        self.set_u64(RSP, 0);
        self.set_u64(RAX, 0);
        self.set_u8(TLB_CONTROL, 1);
        self.set_u64(G_PAT, 0x0007_0406_0007_0406);
    }

    /// A vCPU as the 32-bit entry of a Linux bzImage wants it (boot protocol, "32-bit boot
    /// protocol"): flat protected mode with paging off, `CS` = `code`, the data segments
    /// `data`, interrupts disabled, at `rip`; nested paging from `nested_cr3`, address space
    /// `asid`. Exits on CPUID, VMRUN and shutdown; interrupts, HLT, I/O and MSRs go to the
    /// guest. The general-purpose registers (`ESI` = the zero page) are the caller's.
    pub fn reset_protected_mode(
        &mut self,
        rip: u64,
        (code, data): (u16, u16),
        nested_cr3: u64,
        asid: u32,
    ) {
        use offset::*;
        self.set_u32(INTERCEPT_MISC1, INTERCEPT_CPUID | INTERCEPT_SHUTDOWN);
        self.set_u32(INTERCEPT_MISC2, INTERCEPT_VMRUN);
        self.set_u32(GUEST_ASID, asid);
        self.set_u64(NP_ENABLE, 1);
        self.set_u64(N_CR3, nested_cr3);
        self.set_segment(CS, code, attributes::CODE32, u32::MAX, 0);
        for segment in [ES, SS, DS, FS, GS] {
            self.set_segment(segment, data, attributes::DATA32, u32::MAX, 0);
        }
        // PE and ET.
        self.reset_common(rip, 0x11);
    }

    /// Injects hardware exception `vector` (with `error_code`, if it has one) on the next
    /// VMRUN.
    pub fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        let mut event = u64::from(vector) | 3 << 8 | 1 << 31;
        if let Some(code) = error_code {
            event |= 1 << 11 | u64::from(code) << 32;
        }
        self.set_u64(offset::EVENTINJ, event);
    }

    /// Runs the guest until its next exit with all of its state: the general-purpose
    /// registers in `regs` (RAX and RSP are in the VMCB), the segment and system-call state
    /// VMLOAD and VMSAVE move (FS, GS, TR, LDTR, KernelGsBase, STAR, LSTAR, CSTAR, SFMASK,
    /// SYSENTER). The host's share of the latter is kept in `host` meanwhile.
    ///
    /// `abort` is read with GIF clear right before the switch: if it is set, the guest is
    /// not entered and `None` is returned. A CPU that sets another's flag and then sends it an
    /// NMI (which the guest intercepts) so reaches it wherever it is: in the guest, between
    /// two entries, or about to enter.
    pub fn enter(
        &mut self,
        regs: &mut GuestRegisters,
        host: &Page,
        abort: &AtomicBool,
    ) -> Option<ExitCode> {
        let vmcb = self.page.address();
        let aborted: u64;
        // SAFETY: SVM is on (`enable`) and the VMCB is valid or VMRUN exits with INVALID.
        // `host` is a page of this CPU's alone. The sequence: VMSAVE the host's hidden state,
        // VMLOAD the guest's, load the guest's registers from `regs`, VMRUN; on #VMEXIT RAX
        // and RSP are the host's again (the host save area), so the saved pointers are on the
        // stack; every guest register is stored back to `regs`, the guest's hidden state
        // saved and the host's loaded. RBX and RBP, which asm! cannot clobber, are pushed
        // and popped; every other register is declared clobbered. GIF is clear from before
        // VMLOAD to after the host's VMLOAD, so no interrupt or NMI sees a mixed state.
        unsafe {
            core::arch::asm!(
                "push rbx",
                "push rbp",
                "push rsi",
                "push rdi",
                "clgi",
                "cmp byte ptr [rdx], 0",
                "jne 3f",
                "xchg rax, rsi",
                "vmsave rax",
                "xchg rax, rsi",
                "vmload rax",
                "mov rbx, [rdi + 0]",
                "mov rcx, [rdi + 8]",
                "mov rdx, [rdi + 16]",
                "mov rsi, [rdi + 24]",
                "mov rbp, [rdi + 40]",
                "mov r8, [rdi + 48]",
                "mov r9, [rdi + 56]",
                "mov r10, [rdi + 64]",
                "mov r11, [rdi + 72]",
                "mov r12, [rdi + 80]",
                "mov r13, [rdi + 88]",
                "mov r14, [rdi + 96]",
                "mov r15, [rdi + 104]",
                "mov rdi, [rdi + 32]",
                "vmrun rax",
                "vmsave rax",
                "push rdi",
                "mov rdi, [rsp + 8]",
                "mov [rdi + 0], rbx",
                "mov [rdi + 8], rcx",
                "mov [rdi + 16], rdx",
                "mov [rdi + 24], rsi",
                "mov [rdi + 40], rbp",
                "mov [rdi + 48], r8",
                "mov [rdi + 56], r9",
                "mov [rdi + 64], r10",
                "mov [rdi + 72], r11",
                "mov [rdi + 80], r12",
                "mov [rdi + 88], r13",
                "mov [rdi + 96], r14",
                "mov [rdi + 104], r15",
                "pop qword ptr [rdi + 32]",
                "add rsp, 8",
                "pop rax",
                "vmload rax",
                "stgi",
                "pop rbp",
                "pop rbx",
                "xor edx, edx",
                "jmp 4f",
                "3:",
                "stgi",
                "add rsp, 16",
                "pop rbp",
                "pop rbx",
                "mov edx, 1",
                "4:",
                inout("rax") vmcb => _,
                inout("rdi") core::ptr::from_mut(regs) => _,
                inout("rsi") host.address() => _,
                inout("rdx") abort.as_ptr() => aborted,
                out("rcx") _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            );
        }
        (aborted == 0).then(|| self.exit_code())
    }

    /// Injects an NMI on the next VMRUN.
    /// After an exit during the delivery of an event (an external interrupt the local APIC
    /// already moved into service, an NMI, an exception): the event is injected again at the
    /// next entry, or it would be lost, and with an interrupt its in-service bit would block
    /// every interrupt of its priority and below for good (APM 15.7.2). Software interrupts
    /// and the exceptions of INT3 and INTO are not: RIP still points at their instruction,
    /// which runs again.
    pub fn reinject_interrupted_event(&mut self) {
        const VALID: u64 = 1 << 31;
        const TYPE_EXCEPTION: u64 = 3;
        const TYPE_SOFTWARE: u64 = 4;
        let event = self.u64_at(offset::EXITINTINFO);
        if event & VALID == 0 {
            return;
        }
        const TYPE_INTERRUPT: u64 = 0;
        const TYPE_NMI: u64 = 2;
        let (vector, kind) = (event & 0xff, (event >> 8) & 0b111);
        let software = kind == TYPE_SOFTWARE || (kind == TYPE_EXCEPTION && matches!(vector, 3 | 4));
        if software {
            return;
        }
        // QEMU's TCG reports every event it was delivering as an exception: an NMI injected
        // as exception 2 is invalid (VMRUN fails), and vectors from 32 are interrupts.
        let kind = match (kind, vector) {
            (TYPE_EXCEPTION, 2) => TYPE_NMI,
            (TYPE_EXCEPTION, 32..) => TYPE_INTERRUPT,
            (kind, _) => kind,
        };
        self.set_u64(offset::EVENTINJ, event & !(0b111 << 8) | kind << 8);
    }

    /// Injects an NMI at the next entry.
    pub fn inject_nmi(&mut self) {
        self.set_u64(offset::EVENTINJ, 2 | 2 << 8 | 1 << 31);
    }

    /// Why the guest last exited.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode(self.u64_at(offset::EXITCODE))
    }
}

impl crate::guest::Vcpu for Vmcb<'_> {
    fn run(&mut self, regs: &mut GuestRegisters, abort: &AtomicBool) -> Option<Exit> {
        use crate::guest::Guest as _;
        let Some(host) = self.host else {
            // A VMCB without a host save area cannot run: a hypervisor bug, reported as an
            // invalid state.
            return Some(Exit::Invalid);
        };
        self.enter(regs, host, abort).map(|_| self.exit())
    }
}

impl crate::guest::Guest for Vmcb<'_> {
    fn exit(&self) -> Exit {
        let (info1, info2) = (
            self.u64_at(offset::EXITINFO1),
            self.u64_at(offset::EXITINFO2),
        );
        match self.exit_code() {
            ExitCode::INTR => Exit::Interrupt,
            ExitCode::NMI => Exit::Nmi,
            ExitCode::INIT => Exit::Init,
            ExitCode::CPUID => Exit::Cpuid,
            ExitCode::HLT => Exit::Hlt,
            // EXITINFO1: bit 0 IN, bit 2 string, bits 6:4 the size (one-hot 8, 16, 32),
            // bits 31:16 the port; EXITINFO2: the next RIP.
            ExitCode::IOIO => Exit::Io(IoExit {
                port: (info1 >> 16) as u16,
                size: match (info1 >> 4) & 0b111 {
                    0b001 => 1,
                    0b010 => 2,
                    _ => 4,
                },
                input: info1 & 1 != 0,
                string: info1 & 1 << 2 != 0,
                len: info2.wrapping_sub(self.u64_at(offset::RIP)).min(15) as u8,
            }),
            ExitCode::MSR => Exit::Msr {
                write: info1 & 1 != 0,
            },
            // EXITINFO1: the error code of a page fault (bit 1 write, bit 2 user, bit 4
            // fetch); EXITINFO2: the guest-physical address.
            ExitCode::NPF => Exit::Fault(NestedFault {
                gpa: info2,
                write: info1 & 1 << 1 != 0,
                fetch: info1 & 1 << 4 != 0,
                user: info1 & 1 << 2 != 0,
                raw: info1,
            }),
            ExitCode::VMRUN | ExitCode::VMMCALL => Exit::Virtualization,
            ExitCode::SHUTDOWN => Exit::Shutdown,
            ExitCode::INVALID => Exit::Invalid,
            ExitCode(code) => Exit::Other(code),
        }
    }

    fn exit_information(&self) -> [u64; 2] {
        [
            self.u64_at(offset::EXITINFO1),
            self.u64_at(offset::EXITINFO2),
        ]
    }

    fn fault_address(&self) -> u64 {
        self.u64_at(offset::EXITINFO2)
    }

    fn rip(&self) -> u64 {
        self.u64_at(offset::RIP)
    }

    fn set_rip(&mut self, rip: u64) {
        self.set_u64(offset::RIP, rip);
    }

    fn rax(&self) -> u64 {
        self.u64_at(offset::RAX)
    }

    fn set_rax(&mut self, rax: u64) {
        self.set_u64(offset::RAX, rax);
    }

    fn rsp(&self) -> u64 {
        self.u64_at(offset::RSP)
    }

    fn set_rsp(&mut self, rsp: u64) {
        self.set_u64(offset::RSP, rsp);
    }

    fn rflags(&self) -> u64 {
        self.u64_at(offset::RFLAGS)
    }

    fn control_registers(&self) -> [u64; 4] {
        [offset::CR0, offset::CR2, offset::CR3, offset::CR4].map(|at| self.u64_at(at))
    }

    fn efer(&self) -> u64 {
        self.u64_at(offset::EFER) & !EFER_SVME
    }

    fn set_efer(&mut self, efer: u64) {
        self.set_u64(offset::EFER, efer | EFER_SVME);
    }

    fn cpl(&self) -> u8 {
        self.u8_at(offset::CPL)
    }

    fn cs_selector(&self) -> u16 {
        self.u16_at(offset::CS)
    }

    fn in_64_bit_code(&self) -> bool {
        // EFER.LMA, and CS.L (bit 9 of the VMCB's 12-bit attributes).
        self.u64_at(offset::EFER) & 1 << 10 != 0 && self.u16_at(offset::CS + 2) & 1 << 9 != 0
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        Vmcb::inject_exception(self, vector, error_code);
    }

    fn inject_nmi(&mut self) {
        Vmcb::inject_nmi(self);
    }

    fn event_pending(&self) -> bool {
        self.u64_at(offset::EVENTINJ) & 1 << 31 != 0
    }

    fn reinject_interrupted_event(&mut self) {
        Vmcb::reinject_interrupted_event(self);
    }

    fn set_hlt_exiting(&mut self, exiting: bool) {
        let misc = self.u32_at(offset::INTERCEPT_MISC1);
        let misc = if exiting {
            misc | INTERCEPT_HLT
        } else {
            misc & !INTERCEPT_HLT
        };
        self.set_u32(offset::INTERCEPT_MISC1, misc);
    }

    fn flush_tlb_at_entry(&mut self, flush: bool) {
        // TLB_CONTROL 3: flush this guest's (its ASID's) entries, global ones too.
        self.set_u8(offset::TLB_CONTROL, if flush { 3 } else { 0 });
    }
}
