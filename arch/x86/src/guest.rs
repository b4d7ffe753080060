//! What the exit handlers of the root cell and of the cells need of a vCPU, in terms that
//! both of x86's virtualization extensions provide: AMD SVM's VMCB (`svm::Vmcb`) and Intel
//! VMX's VMCS (`vmcs`) implement `Guest`. The handlers (`root_linux`) read
//! and change the guest's state and learn why it exited only through this, so that they are
//! written once.

use core::fmt;
use core::sync::atomic::AtomicBool;

/// Why a vCPU exited, decoded from the extension's exit code and exit information.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Exit {
    /// A physical interrupt.
    Interrupt,
    /// An NMI (a kick from another CPU, or the chipset's).
    Nmi,
    /// An INIT signal.
    Init,
    /// CPUID (2 bytes).
    Cpuid,
    /// HLT (1 byte).
    Hlt,
    /// IN, OUT, INS or OUTS.
    Io(IoExit),
    /// RDMSR or WRMSR (2 bytes; the MSR in ECX).
    Msr {
        /// WRMSR.
        write: bool,
    },
    /// An access the second-stage tables (NPT or EPT) did not allow.
    Fault(NestedFault),
    /// An instruction of the virtualization extension itself (VMRUN, VMMCALL; VMCALL,
    /// VMXON, ...), which a guest does not get.
    Virtualization,
    /// A triple fault.
    Shutdown,
    /// The entry refused the guest's state.
    Invalid,
    /// Anything else: the extension's raw exit code.
    Other(u64),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Interrupt => f.write_str("interrupt"),
            Self::Nmi => f.write_str("NMI"),
            Self::Init => f.write_str("INIT"),
            Self::Cpuid => f.write_str("CPUID"),
            Self::Hlt => f.write_str("HLT"),
            Self::Io(_) => f.write_str("I/O"),
            Self::Msr { .. } => f.write_str("MSR"),
            Self::Fault(_) => f.write_str("nested page fault"),
            Self::Virtualization => f.write_str("virtualization instruction"),
            Self::Shutdown => f.write_str("shutdown"),
            Self::Invalid => f.write_str("invalid guest state"),
            Self::Other(code) => write!(f, "exit code {code:#x}"),
        }
    }
}

/// An I/O instruction that exited.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IoExit {
    /// The port.
    pub port: u16,
    /// Bytes: 1, 2 or 4.
    pub size: u8,
    /// IN or INS.
    pub input: bool,
    /// INS or OUTS.
    pub string: bool,
    /// The instruction's length in bytes.
    pub len: u8,
}

/// A second-stage fault: the guest-physical address and what the access was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NestedFault {
    /// The guest-physical address.
    pub gpa: u64,
    /// A write.
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
    /// At CPL 3 (SVM's error code says; on VMX the guest's CPL).
    pub user: bool,
    /// The extension's own error code or qualification, for reports.
    pub raw: u64,
}

impl NestedFault {
    /// What the access was, for reports.
    pub fn access(&self) -> &'static str {
        if self.fetch {
            "instruction fetch"
        } else if self.write {
            "write"
        } else {
            "read"
        }
    }
}

/// A vCPU's state as the exit handlers read and change it. The general-purpose registers but
/// RAX and RSP are in [`GuestRegisters`], which both extensions' entries save and load.
pub trait Guest {
    /// Why the vCPU last exited.
    fn exit(&self) -> Exit;
    /// RIP.
    fn rip(&self) -> u64;
    /// Sets RIP.
    fn set_rip(&mut self, rip: u64);
    /// RAX.
    fn rax(&self) -> u64;
    /// Sets RAX.
    fn set_rax(&mut self, rax: u64);
    /// RSP.
    fn rsp(&self) -> u64;
    /// Sets RSP.
    fn set_rsp(&mut self, rsp: u64);
    /// RFLAGS.
    fn rflags(&self) -> u64;
    /// CR0, CR2, CR3 and CR4 (CR2: the last page fault's address).
    fn control_registers(&self) -> [u64; 4];
    /// EFER as the guest sees it (without bits the extension needs for itself).
    fn efer(&self) -> u64;
    /// Sets EFER as the guest asked (the extension adds what it needs).
    fn set_efer(&mut self, efer: u64);
    /// The current privilege level.
    fn cpl(&self) -> u8;
    /// CS's selector.
    fn cs_selector(&self) -> u16;
    /// Whether the guest runs 64-bit code (EFER.LMA and CS.L).
    fn in_64_bit_code(&self) -> bool;
    /// Injects hardware exception `vector` (with `error_code`, if it has one) at the next
    /// entry.
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// Injects an NMI at the next entry.
    fn inject_nmi(&mut self);
    /// Whether an event is to be injected at the next entry.
    fn event_pending(&self) -> bool;
    /// An event whose delivery the exit interrupted is injected again at the next entry.
    fn reinject_interrupted_event(&mut self);
    /// Whether HLT exits.
    fn set_hlt_exiting(&mut self, exiting: bool);
    /// Whether the next entry flushes the guest's cached translations (every later entry
    /// keeps them until this is asked again).
    fn flush_tlb_at_entry(&mut self, flush: bool);
    /// The guest-physical address of the last exit, when it was a [`Exit::Fault`] (the same
    /// as its [`NestedFault::gpa`], without decoding the rest).
    fn fault_address(&self) -> u64;
    /// The extension's raw exit information, for reports (SVM: EXITINFO1 and EXITINFO2).
    fn exit_information(&self) -> [u64; 2];
    /// Moves RIP past the instruction that exited, `len` bytes long.
    fn skip(&mut self, len: usize) {
        let rip = self.rip();
        self.set_rip(rip.wrapping_add(len as u64));
    }
}

/// A vCPU that runs: [`Guest`] and the world switch.
pub trait Vcpu: Guest {
    /// Runs the guest until its next exit that the common handlers take, with the
    /// general-purpose registers in `regs`. `abort` is read right before the entry, with
    /// every event that could be missed held off: if it is set, the guest is not entered and
    /// `None` is returned. A CPU that sets another's flag and then sends it an NMI so reaches
    /// it wherever it is.
    fn run(&mut self, regs: &mut GuestRegisters, abort: &AtomicBool) -> Option<Exit>;
}

/// The guest's general-purpose registers that the VMCB does not hold (RAX and RSP are
/// there), in the order the world switches (`svm::Vmcb::enter`, `vmcs`) store them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegisters {
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8 to R15.
    pub r: [u64; 8],
}

// The offsets the world switches' assembly uses.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(GuestRegisters, rbx) == 0);
    assert!(offset_of!(GuestRegisters, rsi) == 24);
    assert!(offset_of!(GuestRegisters, rdi) == 32);
    assert!(offset_of!(GuestRegisters, rbp) == 40);
    assert!(offset_of!(GuestRegisters, r) == 48);
    assert!(size_of::<GuestRegisters>() == 112);
};
