//! The root cell's Linux on the boot CPU, under SVM with nested paging: the bzImage and
//! initramfs from the Multiboot modules, the Linux boot protocol from `cellvisor-linux`, an
//! e820 map without the hypervisor's memory, and the exits a passed-through root cell takes.
//!
//! This is the first step of the root cell on x86: one CPU (the board's command line has
//! `maxcpus=1` until INIT and SIPI are intercepted), no management interface yet. An access
//! to the hypervisor's memory is reported and answered with a general-protection fault; a
//! triple fault, an invalid state or an exit nothing handles is reported with the vCPU's
//! registers and the CPU parked.

use core::fmt::{self, Write};

use cellvisor_linux::memory_map::{Kind, MemoryMap};
use cellvisor_linux::x86::{BootParams, BzImage, BOOT_CS, BOOT_DS};
use cellvisor_paging::{
    Attributes, FramePool, GuestPhysAddr, LargePages, LinearMemory, MapMode, Mapping, NotLive, Npt,
    PageTable, PhysAddr, TableMemory,
};

use crate::loader::Handoff;
use crate::page::Page;
use crate::serial::Serial;
use crate::svm::{self, ExitCode, GuestRegisters, Vmcb};

/// Where the zero page goes: low RAM, below the hypervisor's AP trampoline (0x8000).
const ZERO_PAGE: u64 = 0x7000;
/// Where the command line goes (at most 4095 bytes and a zero).
const CMDLINE: u64 = 0x6000;
/// Nested page fault error code (EXITINFO1, APM 15.25.6): a write.
const NPF_WRITE: u64 = 1 << 1;
/// ... at user level.
const NPF_USER: u64 = 1 << 2;
/// ... an instruction fetch.
const NPF_FETCH: u64 = 1 << 4;
/// The root cell's address space ID.
const ROOT_ASID: u32 = 1;
/// Frames for the root cell's nested page tables: 4 GiB in 1 GiB pages but for the first
/// GiB, which has the hypervisor's hole (2 MiB pages, 4 KiB ones at its edges).
const ROOT_TABLE_FRAMES: usize = 16;

static ROOT_TABLES: [Page; ROOT_TABLE_FRAMES] = [const { Page::new() }; ROOT_TABLE_FRAMES];
static ROOT_VMCB: Page = Page::new();
static HOST_SAVE: Page = Page::new();
static HOST_STATE: Page = Page::new();

extern "C" {
    static __image_start: u8;
    static __bss_end: u8;
}

/// The hypervisor's memory: `[start, end)`, 4 KiB aligned.
pub fn hypervisor_memory() -> (u64, u64) {
    // Linker symbols: only their addresses are taken, which is safe.
    let (start, end) = (&raw const __image_start as u64, &raw const __bss_end as u64);
    (start & !0xfff, (end + 0xfff) & !0xfff)
}

/// Why the root cell's Linux cannot start.
#[derive(Debug)]
pub enum RootError {
    /// No first Multiboot module.
    NoKernel,
    /// The kernel module is no bzImage this loader takes.
    Image(cellvisor_linux::x86::ImageError),
    /// No room for the kernel.
    Place(cellvisor_linux::x86::PlaceError),
    /// The zero page cannot say something.
    Params(cellvisor_linux::x86::ParamsError),
    /// The memory map cannot take the hypervisor's hole.
    Map(cellvisor_linux::memory_map::MapError),
    /// The zero page or command line would not be in RAM.
    LowMemory,
    /// The nested page tables.
    Tables(cellvisor_paging::Error),
    /// SVM.
    Svm(svm::EnableError),
}

impl fmt::Display for RootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoKernel => f.write_str(
                "no root cell kernel: the first Multiboot module must be a bzImage (QEMU -initrd \"bzImage,initramfs\")",
            ),
            Self::Image(e) => write!(f, "the root cell kernel (module 0): {e}"),
            Self::Place(e) => write!(f, "the root cell kernel: {e}"),
            Self::Params(e) => write!(f, "the root cell's zero page: {e}"),
            Self::Map(e) => write!(f, "the root cell's memory map: {e}"),
            Self::LowMemory => write!(
                f,
                "the zero page ({ZERO_PAGE:#x}) and command line ({CMDLINE:#x}) are not in RAM"
            ),
            Self::Tables(e) => write!(f, "the root cell's nested page tables: {e}"),
            Self::Svm(e) => write!(f, "{e}"),
        }
    }
}

/// The root cell's Linux, loaded and ready to enter.
#[derive(Debug)]
pub struct Prepared {
    /// The kernel's 32-bit entry point (its load address).
    pub entry: u64,
    /// The nested page tables' root.
    pub tables: PhysAddr,
    /// The memory map the kernel gets.
    pub map: MemoryMap,
}

/// Loads the kernel and writes the zero page and command line, builds the nested page
/// tables: everything but the hypervisor's memory, one to one.
pub fn prepare(handoff: &Handoff) -> Result<Prepared, RootError> {
    let kernel = handoff.kernel.ok_or(RootError::NoKernel)?;
    let image = BzImage::parse(kernel.bytes()).map_err(RootError::Image)?;
    let (hyp_start, hyp_end) = hypervisor_memory();
    let mut map = handoff.map.clone();
    map.set(hyp_start, hyp_end - hyp_start, Kind::Reserved)
        .map_err(RootError::Map)?;
    let cmdline = handoff.cmdline.as_bytes();
    if !map.is_all(ZERO_PAGE, 0x1000, Kind::Ram) || !map.is_all(CMDLINE, 0x1000, Kind::Ram) {
        return Err(RootError::LowMemory);
    }
    let initrd = handoff.initrd.map_or((0, 0), |m| (m.start, m.len()));
    let avoid = [
        (ZERO_PAGE, 0x1000),
        (CMDLINE, 0x1000),
        initrd,
        (kernel.start, kernel.len()),
    ];
    let load = image.place(&map, &avoid).map_err(RootError::Place)?;
    let mut params = BootParams::new(&image);
    params
        .set_cmdline(CMDLINE, cmdline.len().min(0xfff))
        .map_err(RootError::Params)?;
    params
        .set_initrd(initrd.0, initrd.1)
        .map_err(RootError::Params)?;
    params.set_load_address(load as u32);
    params.set_memory_map(&map);

    let kernel_bytes = image.kernel();
    // SAFETY: `place` found `init_size` bytes of RAM at `load` that the hypervisor does not
    // own and that overlap neither the image being copied nor the initrd; the zero page and
    // command line are RAM pages of their own (checked above). All are below 4 GiB, mapped
    // one to one, and nothing runs but this CPU.
    unsafe {
        core::ptr::copy_nonoverlapping(kernel_bytes.as_ptr(), load as *mut u8, kernel_bytes.len());
        core::ptr::copy_nonoverlapping(
            params.as_bytes().as_ptr(),
            ZERO_PAGE as *mut u8,
            params.as_bytes().len(),
        );
        let line = CMDLINE as *mut u8;
        let len = cmdline.len().min(0xfff);
        core::ptr::copy_nonoverlapping(cmdline.as_ptr(), line, len);
        line.add(len).write(0);
    }

    let tables = root_tables(hyp_start, hyp_end, &map)?;
    Ok(Prepared {
        entry: load,
        tables,
        map,
    })
}

/// Nested page tables for the root cell: the first 4 GiB and any RAM above, one to one, but
/// for the hypervisor's memory.
fn root_tables(hyp_start: u64, hyp_end: u64, map: &MemoryMap) -> Result<PhysAddr, RootError> {
    let mut memory = TableMemory {
        frames: FramePool::<ROOT_TABLE_FRAMES>::new(PhysAddr::new(ROOT_TABLES.as_ptr() as u64)),
        // SAFETY: the first 4 GiB are mapped one to one (boot.rs); the pool's frames are
        // ROOT_TABLES, which nothing else uses.
        memory: unsafe { LinearMemory::new(0) },
    };
    let top = map
        .ranges()
        .iter()
        .filter(|r| r.kind == Kind::Ram)
        .map(|r| (r.end() + 0xfff) & !0xfff)
        .max()
        .unwrap_or(0)
        .max(1 << 32);
    let mut table =
        PageTable::new(Npt::new(LargePages::ALL), &mut memory).map_err(RootError::Tables)?;
    for (start, end) in [(0, hyp_start), (hyp_end, top)] {
        table
            .map(
                &mut memory,
                &mut NotLive,
                Mapping {
                    input: GuestPhysAddr::new(start),
                    output: PhysAddr::new(start),
                    size: end - start,
                    attributes: Attributes::RAM_RWX,
                },
                MapMode::New,
            )
            .map_err(RootError::Tables)?;
    }
    Ok(table.root())
}

/// Prepares and runs the root cell's Linux on this (the boot) CPU; returns only if it cannot
/// start or stops.
pub fn run(console: &mut Serial, handoff: &Handoff) {
    let prepared = match prepare(handoff) {
        Ok(prepared) => prepared,
        Err(e) => {
            let _ = writeln!(console, "cellvisor: root cell: {e}");
            return;
        }
    };
    if let Err(e) = svm::enable(&HOST_SAVE) {
        let _ = writeln!(console, "cellvisor: root cell: {}", RootError::Svm(e));
        return;
    }
    let (hyp_start, hyp_end) = hypervisor_memory();
    let _ = writeln!(
        console,
        "cellvisor: root cell: Linux at {:#x}, {} e820 ranges, hypervisor {hyp_start:#x}-{:#x} reserved, command line \"{}\"",
        prepared.entry,
        prepared.map.ranges().len(),
        hyp_end - 1,
        handoff.cmdline
    );
    let mut vmcb = Vmcb::new(&ROOT_VMCB);
    vmcb.reset_protected_mode(
        prepared.entry,
        (BOOT_CS, BOOT_DS),
        prepared.tables.as_u64(),
        ROOT_ASID,
    );
    let mut regs = GuestRegisters {
        rsi: ZERO_PAGE,
        ..GuestRegisters::default()
    };
    loop {
        let exit = vmcb.enter(&mut regs, &HOST_STATE);
        match exit {
            ExitCode::CPUID => {
                cpuid(&mut vmcb, &mut regs);
                let rip = vmcb.u64_at(svm::offset::RIP);
                vmcb.set_u64(svm::offset::RIP, rip + 2);
            }
            ExitCode::VMRUN | ExitCode::VMMCALL => {
                // SVM is not the root cell's: #UD, as on a CPU without it.
                vmcb.inject_exception(6, None);
            }
            ExitCode::NPF => {
                // The root cell touched memory it does not have (the hypervisor's): it is
                // told with a general-protection fault at the access, which kills a user
                // process and oopses the kernel, as a bus error does on Arm.
                let info = vmcb.u64_at(svm::offset::EXITINFO1);
                let what = if info & NPF_FETCH != 0 {
                    "instruction fetch"
                } else if info & NPF_WRITE != 0 {
                    "write"
                } else {
                    "read"
                };
                {
                    let _guard = crate::lock_console();
                    let _ = writeln!(
                        console,
                        "cellvisor: cell \"root\" (CPU 0): {what} at {:#x} (RIP {:#x}, {}) is outside its memory: #GP injected",
                        vmcb.u64_at(svm::offset::EXITINFO2),
                        vmcb.u64_at(svm::offset::RIP),
                        if info & NPF_USER != 0 { "user" } else { "kernel" }
                    );
                }
                vmcb.inject_exception(13, Some(0));
            }
            _ => {
                let _guard = crate::lock_console();
                report(console, &vmcb, &regs, exit);
                return;
            }
        }
    }
}

/// CPUID as the CPU answers it, without SVM (the hypervisor's).
fn cpuid(vmcb: &mut Vmcb<'_>, regs: &mut GuestRegisters) {
    let leaf = vmcb.u64_at(svm::offset::RAX) as u32;
    let subleaf = regs.rcx as u32;
    let mut result = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    match leaf {
        // SVM (ECX bit 2).
        0x8000_0001 => result.ecx &= !(1 << 2),
        // The SVM feature leaf.
        0x8000_000a => {
            result.eax = 0;
            result.ebx = 0;
            result.ecx = 0;
            result.edx = 0;
        }
        _ => {}
    }
    vmcb.set_u64(svm::offset::RAX, u64::from(result.eax));
    regs.rbx = u64::from(result.ebx);
    regs.rcx = u64::from(result.ecx);
    regs.rdx = u64::from(result.edx);
}

/// Reports an exit the root cell may not take, with its state.
fn report(console: &mut Serial, vmcb: &Vmcb<'_>, regs: &GuestRegisters, exit: ExitCode) {
    use svm::offset::*;
    let what = match exit {
        ExitCode::SHUTDOWN => "a triple fault (shutdown)",
        ExitCode::INVALID => "an invalid guest state (hypervisor bug)",
        _ => "an exit the hypervisor does not handle",
    };
    let _ = writeln!(
        console,
        "cellvisor: root cell stopped on CPU 0: {what}: {exit}, exit information {:#x} {:#x}",
        vmcb.u64_at(EXITINFO1),
        vmcb.u64_at(EXITINFO2)
    );
    let _ = writeln!(
        console,
        "  RIP {:#018x} RSP {:#018x} RFLAGS {:#x} CS {:#x} CPL {}",
        vmcb.u64_at(RIP),
        vmcb.u64_at(RSP),
        vmcb.u64_at(RFLAGS),
        vmcb.u16_at(CS),
        vmcb.u8_at(CPL)
    );
    let _ = writeln!(
        console,
        "  CR0 {:#x} CR2 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x}",
        vmcb.u64_at(CR0),
        vmcb.u64_at(CR2),
        vmcb.u64_at(CR3),
        vmcb.u64_at(CR4),
        vmcb.u64_at(svm::offset::EFER)
    );
    let _ = writeln!(
        console,
        "  RAX {:#018x} RBX {:#018x} RCX {:#018x} RDX {:#018x}",
        vmcb.u64_at(RAX),
        regs.rbx,
        regs.rcx,
        regs.rdx
    );
    let _ = writeln!(
        console,
        "  RSI {:#018x} RDI {:#018x} RBP {:#018x}",
        regs.rsi, regs.rdi, regs.rbp
    );
    for (i, pair) in regs.r.chunks(4).enumerate() {
        let _ = writeln!(
            console,
            "  R{} {:#018x} R{} {:#018x} R{} {:#018x} R{} {:#018x}",
            8 + i * 4,
            pair[0],
            9 + i * 4,
            pair[1],
            10 + i * 4,
            pair[2],
            11 + i * 4,
            pair[3]
        );
    }
}
