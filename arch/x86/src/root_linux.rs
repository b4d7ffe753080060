//! The root cell's Linux on the boot CPU, under SVM with nested paging: the bzImage and
//! initramfs from the Multiboot modules, the Linux boot protocol from `cellvisor-linux`, an
//! e820 map without the hypervisor's memory, and the exits a passed-through root cell takes.
//!
//! The root cell on x86 so far: every CPU (the others start when its kernel sends them INIT
//! and a start-up IPI, and CPU hotplug works the same way), no management interface yet. An
//! access to the hypervisor's memory is reported and answered with a general-protection
//! fault; a triple fault, an invalid state or an exit nothing handles is reported with the
//! vCPU's registers and code, and the CPU parked.

use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use cellvisor_apic::{IpiKind, Topology};
use cellvisor_config::CpuSet;
use cellvisor_sync::Mutex;

use cellvisor_linux::memory_map::{Kind, MemoryMap};
use cellvisor_linux::x86::{BootParams, BzImage, BOOT_CS, BOOT_DS};
use cellvisor_paging::{
    Attributes, FramePool, GuestPhysAddr, LargePages, LinearMemory, MapMode, Mapping, NotLive, Npt,
    PageTable, PhysAddr, TableMemory,
};

use crate::decode::{self, Direction, Source};
use crate::firmware::MAX_CPUS;
use crate::ioapic;
use crate::loader::Handoff;
use crate::page::Page;
use crate::pci;
use crate::permission::{intercept_msr, intercept_ports, IOPM_SIZE, MSRPM_SIZE};
use crate::serial::Serial;
use crate::svm::{self, ExitCode, GuestRegisters, Vmcb, EFER, EFER_SVME};
use crate::walk;
use crate::xapic::{self, LocalApic, Request};

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
static HOST_SAVE: Page = Page::new();

/// A permission map: pages the CPU reads while the root cell runs.
#[repr(C, align(4096))]
struct Bitmap<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: written once by the boot CPU before the root cell runs, read by the CPU only
// afterwards.
unsafe impl<const N: usize> Sync for Bitmap<N> {}

static MSRPM: Bitmap<MSRPM_SIZE> = Bitmap(UnsafeCell::new([0; MSRPM_SIZE]));
static IOPM: Bitmap<IOPM_SIZE> = Bitmap(UnsafeCell::new([0; IOPM_SIZE]));

/// The `EFER` bits the root cell may write: SCE, LME, LMA, NXE, FFXSR, TCE, AutoIBRS (AMD
/// APM Vol. 2 §3.1.7); anything else is a #GP, as on a CPU without SVM.
const EFER_WRITABLE: u64 = 1 | 1 << 8 | 1 << 10 | 1 << 11 | 1 << 14 | 1 << 15 | 1 << 21;
/// SVM's MSRs: VM_CR, IGNNE, SMM_CTL, VM_HSAVE_PA. The root cell has no SVM (CPUID says so),
/// so any access is a #GP; above all, it must not move the host save area, from which every
/// #VMEXIT restores the hypervisor's RIP and RSP.
const SVM_MSRS: [u32; 4] = [0xc001_0114, 0xc001_0115, 0xc001_0116, 0xc001_0117];
/// `IA32_APIC_BASE`: writes exit, so that the root cell keeps its local APIC where it traps
/// and in xAPIC mode.
const APIC_BASE: u32 = 0x1b;
/// `IA32_APIC_BASE` bit 10: x2APIC mode.
const APIC_BASE_EXTD: u64 = 1 << 10;
/// `IA32_APIC_BASE` bits 51:12: the page.
const APIC_BASE_PAGE: u64 = 0x000f_ffff_ffff_f000;
/// `SLP_EN` in the ACPI PM1 control register: the write that enters a sleep state.
const SLP_EN: u64 = 1 << 13;

/// What a CPU of the root cell exited for, by reason.
#[derive(Debug)]
struct Exits {
    apic: AtomicU64,
    ioapic: AtomicU64,
    pci: AtomicU64,
    cpuid: AtomicU64,
    msr: AtomicU64,
    io: AtomicU64,
    npf: AtomicU64,
    svm: AtomicU64,
}

impl Exits {
    const fn new() -> Self {
        Self {
            apic: AtomicU64::new(0),
            ioapic: AtomicU64::new(0),
            pci: AtomicU64::new(0),
            cpuid: AtomicU64::new(0),
            msr: AtomicU64::new(0),
            io: AtomicU64::new(0),
            npf: AtomicU64::new(0),
            svm: AtomicU64::new(0),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts: apic, ioapic, pci, cpuid, msr, io, npf, svm.
    fn get(&self) -> [u64; 8] {
        [
            &self.apic,
            &self.ioapic,
            &self.pci,
            &self.cpuid,
            &self.msr,
            &self.io,
            &self.npf,
            &self.svm,
        ]
        .map(|counter| counter.load(Ordering::Relaxed))
    }
}

/// Violation reports a CPU prints in full before it prints one in [`REPORT_EVERY`] (a cell
/// that repeats a violation in a loop must not take the console).
const REPORTS_IN_FULL: u32 = 32;
/// See [`REPORTS_IN_FULL`].
const REPORT_EVERY: u32 = 1024;

/// Whether the next violation report of `per_cpu` is printed; the first one held back says
/// so.
fn may_report(console: &mut Serial, cpu: u32, per_cpu: &PerCpu) -> bool {
    let n = per_cpu.reports.fetch_add(1, Ordering::Relaxed);
    if n == REPORTS_IN_FULL {
        let _guard = crate::lock_console();
        let _ = writeln!(
            console,
            "cellvisor: cell \"root\" (CPU {cpu}): {REPORTS_IN_FULL} violations reported; from now on one in {REPORT_EVERY}"
        );
    }
    n < REPORTS_IN_FULL || n.is_multiple_of(REPORT_EVERY)
}

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
pub fn prepare(handoff: &Handoff, ecam: Option<pci::Ecam>) -> Result<Prepared, RootError> {
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

    let tables = root_tables(hyp_start, hyp_end, ecam, &map)?;
    Ok(Prepared {
        entry: load,
        tables,
        map,
    })
}

/// Nested page tables for the root cell: the first 4 GiB and any RAM above, one to one, but
/// for the hypervisor's memory and the register pages that trap: the ECAM window (see `pci`),
/// the IOAPIC's and the local APIC's (see `ioapic` and `xapic`).
fn root_tables(
    hyp_start: u64,
    hyp_end: u64,
    ecam: Option<pci::Ecam>,
    map: &MemoryMap,
) -> Result<PhysAddr, RootError> {
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
    let mut holes: heapless::Vec<(u64, u64), 4> = heapless::Vec::new();
    let _ = holes.push((hyp_start, hyp_end));
    if let Some(ecam) = ecam {
        let _ = holes.push((ecam.base, ecam.base + ecam.size()));
    }
    let _ = holes.push((ioapic::BASE, ioapic::BASE + 0x1000));
    let _ = holes.push((xapic::BASE, xapic::BASE + 0x1000));
    holes.sort_unstable();
    let mut at = 0;
    for (start, end) in holes.iter().copied().chain(core::iter::once((top, top))) {
        if start > at {
            table
                .map(
                    &mut memory,
                    &mut NotLive,
                    Mapping {
                        input: GuestPhysAddr::new(at),
                        output: PhysAddr::new(at),
                        size: start - at,
                        attributes: Attributes::RAM_RWX,
                    },
                    MapMode::New,
                )
                .map_err(RootError::Tables)?;
        }
        at = at.max(end);
    }
    Ok(table.root())
}

/// What every CPU of the root cell shares, set once by the boot CPU before any vCPU runs.
struct Shared {
    /// The ECAM window, if it traps.
    ecam: Option<pci::Ecam>,
    /// The memory map the kernel got: its RAM, which the hypervisor reads instructions and
    /// page tables from.
    map: MemoryMap,
    /// The nested page tables' root.
    tables: u64,
    /// The PM1a control port, if it traps.
    power: Option<u16>,
    /// The root cell's CPUs.
    cpus: CpuSet,
    /// Each CPU's APIC ID.
    apic_ids: heapless::Vec<u32, MAX_CPUS>,
}

static SHARED: spin::Once<Shared> = spin::Once::new();

/// The machine's CPUs and the logical IDs their software set, for the root cell's IPIs.
static TOPOLOGY: Mutex<Option<Topology>> = Mutex::new(None);

/// A CPU's requests from other CPUs: [`INIT`], and a start-up IPI ([`SIPI`] with the vector
/// in bits 7:0).
const INIT: u32 = 1 << 31;
const SIPI: u32 = 1 << 8;

/// What a CPU of the root cell has of its own.
struct PerCpu {
    vmcb: Page,
    host_state: Page,
    mailbox: AtomicU32,
    /// Another CPU asked something of this one and sent it an NMI.
    kicked: AtomicBool,
    /// The root cell sent this CPU an NMI (the hypervisor sent it and injects it).
    root_nmi: AtomicBool,
    /// Its exits since boot.
    exits: Exits,
    /// Violations it reported.
    reports: AtomicU32,
}

static CPUS: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        vmcb: Page::new(),
        host_state: Page::new(),
        mailbox: AtomicU32::new(0),
        kicked: AtomicBool::new(false),
        root_nmi: AtomicBool::new(false),
        exits: Exits::new(),
        reports: AtomicU32::new(0),
    }
}; MAX_CPUS];

/// CPU `cpu`'s own state and APIC ID, once the root cell runs.
fn target(cpu: u32) -> Option<(&'static PerCpu, u32)> {
    let shared = SHARED.get()?;
    Some((CPUS.get(cpu as usize)?, *shared.apic_ids.get(cpu as usize)?))
}

/// Sends the root cell's NMI to `cpu`: marked, so that the NMI exit it causes injects it.
fn root_nmi(cpu: u32) {
    let Some((per_cpu, apic_id)) = target(cpu) else {
        return;
    };
    per_cpu.root_nmi.store(true, Ordering::SeqCst);
    xapic::send_physical(apic_id, xapic::ICR_NMI);
}

/// Whether an event waits in the VMCB for the next entry.
fn event_pending(vmcb: &Vmcb<'_>) -> bool {
    vmcb.u64_at(svm::offset::EVENTINJ) & 1 << 31 != 0
}

/// Asks `cpu` for an INIT or a start-up and kicks it out of its guest or its sleep.
fn request(cpu: u32, kind: IpiKind) {
    let Some((per_cpu, apic_id)) = target(cpu) else {
        return;
    };
    match kind {
        IpiKind::Init => per_cpu.mailbox.store(INIT, Ordering::SeqCst),
        IpiKind::Startup(vector) => {
            let _ = per_cpu
                .mailbox
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                    Some(m & INIT | SIPI | u32::from(vector))
                });
        }
        _ => return,
    }
    per_cpu.kicked.store(true, Ordering::SeqCst);
    xapic::send_physical(apic_id, xapic::ICR_NMI);
}

/// Prepares the root cell's Linux and runs it on this (the boot) CPU; returns only if it
/// cannot start or stops. The other CPUs join when the kernel starts them
/// ([`application_processor`]).
pub fn run(console: &mut Serial, handoff: &Handoff, apic_ids: &[u32]) {
    let topology = match Topology::new(apic_ids) {
        Ok(topology) => topology,
        Err(e) => {
            let _ = writeln!(console, "cellvisor: root cell: the CPUs' APIC IDs: {e:?}");
            return;
        }
    };
    // The ECAM window below 4 GiB (the boot map's), or none: then mechanism #1 alone.
    let ecam = crate::firmware::ecam()
        .ok()
        .filter(|ecam| ecam.base + ecam.size() <= 1 << 32);
    let prepared = match prepare(handoff, ecam) {
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
    let cpus = topology.all();
    *TOPOLOGY.lock() = Some(topology);
    ioapic::probe();
    if let Some(ecam) = ecam {
        pci::init(ecam);
    }
    let power = power_control();
    fill_permissions(power);
    let shared = SHARED.call_once(|| Shared {
        ecam,
        map: prepared.map.clone(),
        tables: prepared.tables.as_u64(),
        power,
        cpus,
        apic_ids: apic_ids.iter().copied().take(MAX_CPUS).collect(),
    });
    let (hyp_start, hyp_end) = hypervisor_memory();
    let _ = writeln!(
        console,
        "cellvisor: root cell: Linux at {:#x} on {} CPUs, {} e820 ranges, hypervisor {hyp_start:#x}-{:#x} reserved, command line \"{}\"",
        prepared.entry,
        shared.cpus.len(),
        prepared.map.ranges().len(),
        hyp_end - 1,
        handoff.cmdline
    );
    let mut vmcb = Vmcb::new(&CPUS[0].vmcb);
    vmcb.reset_protected_mode(prepared.entry, (BOOT_CS, BOOT_DS), shared.tables, ROOT_ASID);
    root_intercepts(&mut vmcb);
    let mut regs = GuestRegisters {
        rsi: ZERO_PAGE,
        ..GuestRegisters::default()
    };
    let _ = vcpu(console, 0, shared, &mut vmcb, &mut regs);
}

/// An application processor of the root cell, with SVM on: it sleeps until the kernel's
/// INIT and start-up IPI for it, then runs the kernel's vCPU from the start-up vector, until
/// the next INIT (a CPU taken offline and brought back).
pub fn application_processor(cpu: u32, console: &mut Serial) -> ! {
    let Some(per_cpu) = CPUS.get(cpu as usize) else {
        crate::halt()
    };
    let mut waiting_for_startup = false;
    loop {
        crate::wait::wait(&per_cpu.mailbox);
        // The kick first, then the mailbox: a request that comes in between kicks again, so
        // the vCPU started below cannot miss it.
        per_cpu.kicked.store(false, Ordering::SeqCst);
        let requests = per_cpu.mailbox.swap(0, Ordering::SeqCst);
        if requests & INIT != 0 {
            xapic::init_reset();
            waiting_for_startup = true;
        }
        if requests & SIPI == 0 || !waiting_for_startup {
            continue;
        }
        waiting_for_startup = false;
        let Some(shared) = SHARED.get() else { continue };
        let vector = (requests & 0xff) as u16;
        let mut vmcb = Vmcb::new(&per_cpu.vmcb);
        vmcb.reset_real_mode_at(vector << 8, 0, shared.tables, ROOT_ASID);
        root_intercepts(&mut vmcb);
        let mut regs = GuestRegisters::default();
        if vcpu(console, cpu, shared, &mut vmcb, &mut regs).is_err() {
            crate::halt()
        }
    }
}

/// The VMCB's intercepts for a root-cell vCPU: CPUID, shutdown, NMIs (kicks), MSRs and I/O by
/// the permission maps; VMRUN.
fn root_intercepts(vmcb: &mut Vmcb<'_>) {
    let misc = svm::INTERCEPT_CPUID
        | svm::INTERCEPT_SHUTDOWN
        | svm::INTERCEPT_NMI
        | svm::INTERCEPT_MSR
        | svm::INTERCEPT_IOIO;
    vmcb.set_u32(svm::offset::INTERCEPT_MISC1, misc);
    vmcb.set_u32(svm::offset::INTERCEPT_MISC2, svm::INTERCEPT_VMRUN);
    vmcb.set_u64(svm::offset::MSRPM_BASE_PA, MSRPM.0.get() as u64);
    vmcb.set_u64(svm::offset::IOPM_BASE_PA, IOPM.0.get() as u64);
}

/// A register page of the machine's that traps for the root cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TrappedPage {
    /// The local APIC's (`xapic`).
    LocalApic,
    /// The IOAPIC's (`ioapic`).
    IoApic,
    /// The PCI ECAM window (`pci`).
    Ecam,
}

impl TrappedPage {
    fn name(self) -> &'static str {
        match self {
            Self::LocalApic => "local APIC",
            Self::IoApic => "IOAPIC",
            Self::Ecam => "PCI configuration",
        }
    }
}

/// Which trapped page the nested page fault in `vmcb` hit, if any.
fn trapped_page(shared: &Shared, vmcb: &Vmcb<'_>) -> Option<TrappedPage> {
    let gpa = vmcb.u64_at(svm::offset::EXITINFO2);
    let page = |base: u64| (base..base + 0x1000).contains(&gpa);
    if page(xapic::BASE) {
        Some(TrappedPage::LocalApic)
    } else if page(ioapic::BASE) {
        Some(TrappedPage::IoApic)
    } else if shared
        .ecam
        .is_some_and(|ecam| (ecam.base..ecam.base + ecam.size()).contains(&gpa))
    {
        Some(TrappedPage::Ecam)
    } else {
        None
    }
}

/// The vCPU stopped for good: reported, the CPU parks.
#[derive(Debug)]
struct Stopped;

/// Runs a root-cell vCPU on `cpu` until an INIT for it (`Ok`) or an exit it cannot take
/// (`Err`, reported).
fn vcpu(
    console: &mut Serial,
    cpu: u32,
    shared: &Shared,
    vmcb: &mut Vmcb<'_>,
    regs: &mut GuestRegisters,
) -> Result<(), Stopped> {
    let per_cpu = &CPUS[cpu as usize];
    let mut apic = LocalApic::new(cpu, shared.cpus, true);
    let exits = &per_cpu.exits;
    loop {
        // The root cell's NMI, unless an exception is being injected (it waits a round).
        if !event_pending(vmcb) && per_cpu.root_nmi.swap(false, Ordering::SeqCst) {
            vmcb.inject_nmi();
        }
        let exit = vmcb.enter(regs, &per_cpu.host_state, &per_cpu.kicked);
        // The first entry flushed this CPU's TLB (the reset asks for it); the nested tables
        // do not change while the root cell runs alone, so later entries keep it.
        if exit.is_some() {
            vmcb.set_u8(svm::offset::TLB_CONTROL, 0);
        }
        // A kick (before entering, or as the NMI exit): an INIT ends this vCPU; a start-up
        // IPI for a running CPU is ignored, as the hardware does.
        if matches!(exit, None | Some(ExitCode::NMI))
            && per_cpu.kicked.swap(false, Ordering::SeqCst)
        {
            if per_cpu.mailbox.load(Ordering::SeqCst) & INIT != 0 {
                return Ok(());
            }
            let _ = per_cpu
                .mailbox
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                    (m & INIT == 0).then_some(0)
                });
        }
        let Some(exit) = exit else { continue };
        // A register page that traps: decoded and emulated.
        if exit == ExitCode::NPF {
            if let Some(page) = trapped_page(shared, vmcb) {
                let (counter, result) = match page {
                    TrappedPage::LocalApic => (
                        &exits.apic,
                        emulate_apic(console, vmcb, regs, &shared.map, &mut apic),
                    ),
                    TrappedPage::IoApic => (
                        &exits.ioapic,
                        emulate_ioapic(console, cpu, shared, vmcb, regs),
                    ),
                    TrappedPage::Ecam => {
                        (&exits.pci, emulate_ecam(console, cpu, shared, vmcb, regs))
                    }
                };
                Exits::count(counter);
                if let Err(e) = result {
                    vmcb.inject_exception(13, Some(0));
                    if may_report(console, cpu, per_cpu) {
                        let _guard = crate::lock_console();
                        let _ = writeln!(
                            console,
                            "cellvisor: cell \"root\" (CPU {cpu}): {} access at RIP {:#x} not emulated: {e}: #GP injected",
                            page.name(),
                            vmcb.u64_at(svm::offset::RIP)
                        );
                    }
                }
                continue;
            }
        }
        match exit {
            // A kick or the root cell's NMI, both handled around the entry. An NMI from
            // elsewhere (the chipset) is dropped.
            ExitCode::NMI => {}
            ExitCode::CPUID => {
                Exits::count(&exits.cpuid);
                cpuid(vmcb, regs);
                let rip = vmcb.u64_at(svm::offset::RIP);
                vmcb.set_u64(svm::offset::RIP, rip + 2);
            }
            ExitCode::MSR => {
                Exits::count(&exits.msr);
                msr(vmcb, regs);
            }
            ExitCode::IOIO => io(console, vmcb, cpu, shared),
            ExitCode::VMRUN | ExitCode::VMMCALL => {
                // SVM is not the root cell's: #UD, as on a CPU without it.
                Exits::count(&exits.svm);
                vmcb.inject_exception(6, None);
            }
            ExitCode::NPF => {
                Exits::count(&exits.npf);
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
                if may_report(console, cpu, per_cpu) {
                    let _guard = crate::lock_console();
                    let _ = writeln!(
                        console,
                        "cellvisor: cell \"root\" (CPU {cpu}): {what} at {:#x} (RIP {:#x}, {}) is outside its memory: #GP injected",
                        vmcb.u64_at(svm::offset::EXITINFO2),
                        vmcb.u64_at(svm::offset::RIP),
                        if info & NPF_USER != 0 { "user" } else { "kernel" }
                    );
                }
                vmcb.inject_exception(13, Some(0));
            }
            _ => {
                let _guard = crate::lock_console();
                report(console, cpu, vmcb, regs, exit);
                if let Ok((bytes, len)) = fetch(vmcb, &shared.map) {
                    let _ = writeln!(console, "  code at RIP: {:02x?}", &bytes[..len.min(16)]);
                }
                return Err(Stopped);
            }
        }
    }
}

/// The ACPI PM1a control port (from the FADT), if the firmware has one in I/O space.
fn power_control() -> Option<u16> {
    let address = crate::firmware::pm1a_control().ok()?;
    u16::try_from(address).ok()
}

/// Fills the permission maps: `EFER`, SVM's MSRs and `IA32_APIC_BASE` writes exit, and so do
/// the PM1a control port `power` (the root cell's power-off is reported) and the PCI
/// configuration ports.
fn fill_permissions(power: Option<u16>) {
    // SAFETY: the boot CPU alone, before any root-cell vCPU runs; nothing else writes the
    // maps.
    let (msrpm, iopm) = unsafe { (&mut *MSRPM.0.get(), &mut *IOPM.0.get()) };
    for msr in core::iter::once(EFER).chain(SVM_MSRS) {
        // Every one of them is in the map's ranges (checked by the unit tests' layout).
        let _ = intercept_msr(msrpm, msr, true, true);
    }
    let _ = intercept_msr(msrpm, APIC_BASE, false, true);
    if let Some(port) = power {
        intercept_ports(iopm, port, 2);
    }
    let (first, last) = pci::PORTS;
    intercept_ports(iopm, first, last - first + 1);
}

/// An RDMSR or WRMSR that exited: `EFER` without SVME, a #GP for SVM's MSRs and for MSRs
/// outside the map (which always exit; the CPU has none of them that the root cell needs).
fn msr(vmcb: &mut Vmcb<'_>, regs: &mut GuestRegisters) {
    use svm::offset::{EXITINFO1, RAX, RIP};
    let write = vmcb.u64_at(EXITINFO1) & 1 != 0;
    let msr = regs.rcx as u32;
    let value = (regs.rdx & 0xffff_ffff) << 32 | (vmcb.u64_at(RAX) & 0xffff_ffff);
    match (msr, write) {
        (EFER, false) => {
            let efer = vmcb.u64_at(svm::offset::EFER) & !EFER_SVME;
            vmcb.set_u64(RAX, efer & 0xffff_ffff);
            regs.rdx = efer >> 32;
        }
        (EFER, true) if value & !EFER_WRITABLE == 0 => {
            vmcb.set_u64(svm::offset::EFER, value | EFER_SVME);
        }
        (APIC_BASE, true)
            if value & APIC_BASE_PAGE == xapic::BASE && value & APIC_BASE_EXTD == 0 =>
        {
            // SAFETY: the same page and mode: only the enable and BSP bits can differ, which
            // are the root cell's own CPU's.
            unsafe { x86_64::registers::model_specific::Msr::new(APIC_BASE).write(value) };
        }
        _ => {
            vmcb.inject_exception(13, Some(0));
            return;
        }
    }
    let rip = vmcb.u64_at(RIP);
    vmcb.set_u64(RIP, rip + 2);
}

/// Prints the exits of every CPU of the root cell: the total, then one line per CPU.
fn report_exits(console: &mut Serial, shared: &Shared, why: fmt::Arguments<'_>) {
    let mut total = [0u64; 8];
    for cpu in shared.cpus.iter() {
        for (sum, count) in total.iter_mut().zip(CPUS[cpu as usize].exits.get()) {
            *sum += count;
        }
    }
    let line = |console: &mut Serial, counts: [u64; 8]| {
        let [apic, ioapic, pci, cpuid, msr, io, npf, svm] = counts;
        let _ = writeln!(
            console,
            "apic {apic}, ioapic {ioapic}, pci {pci}, cpuid {cpuid}, msr {msr}, io {io}, npf {npf}, svm {svm}"
        );
    };
    let _guard = crate::lock_console();
    let _ = write!(
        console,
        "cellvisor: root cell: {why}: exits on {} CPUs: ",
        shared.cpus.len()
    );
    line(console, total);
    for cpu in shared.cpus.iter() {
        let _ = write!(console, "  CPU {cpu}: ");
        line(console, CPUS[cpu as usize].exits.get());
    }
}

/// An IN or OUT that exited: the PM1a control port (done for the root cell; a write that
/// enters a sleep state is reported with the exits first), the PCI configuration ports
/// (decided by `cellvisor-pci`), or the reset control register (done).
fn io(console: &mut Serial, vmcb: &mut Vmcb<'_>, cpu: u32, shared: &Shared) {
    use svm::offset::{EXITINFO1, EXITINFO2, RAX, RIP};
    use x86_64::instructions::port::Port;
    let info = vmcb.u64_at(EXITINFO1);
    let input = info & 1 != 0;
    let size: u8 = match (info >> 4) & 0b111 {
        0b001 => 1,
        0b010 => 2,
        _ => 4,
    };
    let port = (info >> 16) as u16;
    let string = info & (1 << 2) != 0;
    let exits = &CPUS[cpu as usize].exits;
    if (pci::PORTS.0..=pci::PORTS.1).contains(&port) && port != pci::RESET_CONTROL {
        Exits::count(&exits.pci);
    } else {
        Exits::count(&exits.io);
    }
    let mask = if size == 4 {
        0xffff_ffff
    } else {
        (1u64 << (8 * u32::from(size))) - 1
    };
    let rax = vmcb.u64_at(RAX);
    let stored = rax & mask;
    // What an IN reads (an OUT: nothing).
    let loaded: u64 = if string {
        // No string I/O to these registers: reads all ones, writes dropped.
        mask
    } else if Some(port) == shared.power && size == 2 {
        if input {
            // SAFETY: the PM1a control register's read has no side effect.
            u64::from(unsafe { Port::<u16>::new(port).read() })
        } else {
            if stored & SLP_EN != 0 {
                report_exits(
                    console,
                    shared,
                    format_args!("ACPI sleep (PM1a control {stored:#06x})"),
                );
            }
            // SAFETY: the root cell owns the machine's power: its write is done as asked.
            unsafe { Port::<u16>::new(port).write(stored as u16) };
            0
        }
    } else if port == pci::RESET_CONTROL && size == 1 {
        // SAFETY: the root cell owns the machine's reset: its access is done as asked.
        unsafe {
            if input {
                u64::from(Port::<u8>::new(port).read())
            } else {
                Port::<u8>::new(port).write(stored as u8);
                0
            }
        }
    } else if (pci::PORTS.0..pci::PORTS.0 + 4).contains(&port) && size != 4 {
        // Only a whole dword is CONFIG_ADDRESS: the hardware passes narrower accesses on as
        // plain I/O, which reaches nothing here (Linux's type 1 probe writes a byte to
        // 0xCFB). Reads all ones, writes dropped, as on the hardware.
        mask
    } else if (pci::PORTS.0..=pci::PORTS.1).contains(&port) {
        let write = (!input).then_some(stored as u32);
        match pci_access(console, cpu, shared, pci::Target::Port(port), size, write) {
            Some(value) => u64::from(value),
            None => mask,
        }
    } else {
        mask
    };
    if input {
        vmcb.set_u64(RAX, rax & !mask | loaded & mask);
    }
    vmcb.set_u64(RIP, vmcb.u64_at(EXITINFO2));
}

/// A root-cell access to PCI configuration space, decided by `cellvisor-pci` (every function
/// the root cell's while it runs alone); what the policy refuses is reported. Returns what a
/// read reads.
fn pci_access(
    console: &mut Serial,
    cpu: u32,
    shared: &Shared,
    target: pci::Target,
    size: u8,
    write: Option<u32>,
) -> Option<u32> {
    let outcome = {
        let topology = TOPOLOGY.lock();
        let topology = topology.as_ref()?;
        let msi = pci::X86Msi {
            topology,
            root_cpus: &shared.cpus,
        };
        pci::access(&msi, cellvisor_cell::CellId::ROOT, cpu, target, size, write)
    };
    match outcome {
        Ok(cellvisor_pci::Outcome::Read(value)) => Some(value),
        Ok(cellvisor_pci::Outcome::Written) => Some(0),
        Ok(cellvisor_pci::Outcome::Refused(why)) => {
            if may_report(console, cpu, &CPUS[cpu as usize]) {
                let _guard = crate::lock_console();
                let _ = writeln!(
                    console,
                    "cellvisor: cell \"root\" (CPU {cpu}): PCI configuration {target:?}: {why}: refused"
                );
            }
            None
        }
        // The root cell's accesses are refused, never a violation.
        Err(_) => None,
    }
}

/// A root-cell access to the ECAM window: decoded and decided like the ports.
fn emulate_ecam(
    console: &mut Serial,
    cpu: u32,
    shared: &Shared,
    vmcb: &mut Vmcb<'_>,
    regs: &mut GuestRegisters,
) -> Result<(), EmulationError> {
    let Some(ecam) = shared.ecam else {
        return Ok(());
    };
    let offset = vmcb.u64_at(svm::offset::EXITINFO2) - ecam.base;
    let (access, stored) = decode_access(vmcb, regs, &shared.map)?;
    let size = access.size.min(4);
    let write = stored.map(|value| value as u32);
    let loaded = pci_access(console, cpu, shared, pci::Target::Ecam(offset), size, write)
        .unwrap_or(u32::MAX);
    complete(vmcb, regs, access, loaded);
    Ok(())
}

/// Why an access to a trapped register page could not be emulated.
#[derive(Debug)]
enum EmulationError {
    /// Not in 64-bit mode.
    NotLongMode,
    /// The instruction's first byte is not readable.
    Fetch(walk::WalkError),
    /// The instruction is not one the decoder takes.
    Decode(decode::DecodeError),
}

impl fmt::Display for EmulationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLongMode => f.write_str("the vCPU is not in 64-bit mode"),
            Self::Fetch(e) => write!(f, "the instruction cannot be read: {e}"),
            Self::Decode(e) => write!(f, "{e}"),
        }
    }
}

/// Reads the instruction at the guest's RIP through its page tables, from its RAM only.
fn fetch(
    vmcb: &Vmcb<'_>,
    map: &MemoryMap,
) -> Result<([u8; decode::MAX_LEN], usize), EmulationError> {
    let efer = vmcb.u64_at(svm::offset::EFER);
    let cs_long = vmcb.u16_at(svm::offset::CS + 2) & (1 << 9) != 0;
    if efer & (1 << 10) == 0 || !cs_long {
        return Err(EmulationError::NotLongMode);
    }
    let cr3 = vmcb.u64_at(svm::offset::CR3);
    let rip = vmcb.u64_at(svm::offset::RIP);
    let ram = |gpa: u64| map.is_all(gpa & !0xfff, 0x1000, Kind::Ram);
    let read_entry = |gpa: u64| {
        // SAFETY: 8 aligned bytes of the root cell's RAM (checked), below 4 GiB or in the
        // RAM the boot map covers; page tables the guest may change at any time, which only
        // makes the translation the guest's problem.
        (ram(gpa) && gpa.is_multiple_of(8) && gpa < 1 << 32)
            .then(|| unsafe { (gpa as *const u64).read_volatile() })
    };
    let mut bytes = [0u8; decode::MAX_LEN];
    let mut len = 0;
    while len < bytes.len() {
        let linear = rip.wrapping_add(len as u64);
        let gpa = match walk::translate(cr3, linear, read_entry) {
            Ok(gpa) if ram(gpa) && gpa < 1 << 32 => gpa,
            Ok(gpa) => {
                if len == 0 {
                    return Err(EmulationError::Fetch(walk::WalkError::Unreadable(gpa)));
                }
                break;
            }
            Err(e) if len == 0 => return Err(EmulationError::Fetch(e)),
            Err(_) => break,
        };
        let in_page = (0x1000 - (gpa & 0xfff)) as usize;
        for i in 0..in_page.min(bytes.len() - len) {
            // SAFETY: a byte of the root cell's RAM (checked), mapped one to one.
            bytes[len + i] = unsafe { ((gpa + i as u64) as *const u8).read_volatile() };
        }
        len += in_page.min(bytes.len() - len);
    }
    Ok((bytes, len))
}

/// General-purpose register `n` (0 RAX ... 15 R15) of the vCPU.
fn register(vmcb: &Vmcb<'_>, regs: &GuestRegisters, n: u8) -> u64 {
    match n {
        0 => vmcb.u64_at(svm::offset::RAX),
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => vmcb.u64_at(svm::offset::RSP),
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        n => regs.r[usize::from(n & 7)],
    }
}

/// Writes `value` of `size` bytes to register `n` as a load does: 4 bytes zero-extend, 1
/// and 2 bytes keep the rest (`high_byte`: AH, CH, DH or BH).
fn set_register(
    vmcb: &mut Vmcb<'_>,
    regs: &mut GuestRegisters,
    n: u8,
    size: u8,
    high_byte: bool,
    value: u64,
) {
    let (n, shift) = if high_byte { (n - 4, 8) } else { (n, 0) };
    let old = register(vmcb, regs, n);
    let new = match size {
        8 => value,
        4 => value & 0xffff_ffff,
        _ => {
            let mask = ((1u64 << (8 * u32::from(size))) - 1) << shift;
            old & !mask | (value << shift) & mask
        }
    };
    match n {
        0 => vmcb.set_u64(svm::offset::RAX, new),
        1 => regs.rcx = new,
        2 => regs.rdx = new,
        3 => regs.rbx = new,
        4 => vmcb.set_u64(svm::offset::RSP, new),
        5 => regs.rbp = new,
        6 => regs.rsi = new,
        7 => regs.rdi = new,
        n => regs.r[usize::from(n & 7)] = new,
    }
}

/// A trapped access to an emulated register page: the instruction at RIP decoded, and the
/// value it stores (`None` for a load).
fn decode_access(
    vmcb: &Vmcb<'_>,
    regs: &GuestRegisters,
    map: &MemoryMap,
) -> Result<(decode::Access, Option<u64>), EmulationError> {
    let (bytes, len) = fetch(vmcb, map)?;
    let access = decode::decode(&bytes[..len]).map_err(EmulationError::Decode)?;
    let value = match access.direction {
        Direction::Read(_) => None,
        Direction::Write(Source::Register(n)) => {
            let value = register(vmcb, regs, n);
            Some(if access.high_byte { value >> 8 } else { value })
        }
        Direction::Write(Source::Immediate(value)) => Some(value),
    };
    Ok((access, value))
}

/// Completes a decoded access: a load gets `value`, and RIP moves past the instruction.
fn complete(vmcb: &mut Vmcb<'_>, regs: &mut GuestRegisters, access: decode::Access, value: u32) {
    if let Direction::Read(n) = access.direction {
        set_register(
            vmcb,
            regs,
            n,
            access.size,
            access.high_byte,
            u64::from(value),
        );
    }
    let rip = vmcb.u64_at(svm::offset::RIP);
    vmcb.set_u64(svm::offset::RIP, rip + access.len as u64);
}

/// A root-cell access to its local APIC's page: decided by `cellvisor-apic` and done.
/// Registers are 32 bits wide: other sizes read 0 and write nothing.
fn emulate_apic(
    console: &mut Serial,
    vmcb: &mut Vmcb<'_>,
    regs: &mut GuestRegisters,
    map: &MemoryMap,
    apic: &mut LocalApic,
) -> Result<(), EmulationError> {
    let offset = vmcb.u64_at(svm::offset::EXITINFO2) - xapic::BASE;
    let (access, stored) = decode_access(vmcb, regs, map)?;
    let mut loaded = 0;
    match stored {
        None if access.size == 4 => loaded = apic.read(offset),
        None => {}
        Some(value) if access.size == 4 => {
            let value = value as u32;
            let decision = {
                let mut topology = TOPOLOGY.lock();
                match topology.as_mut() {
                    Some(topology) => apic.write(offset, value, topology),
                    None => Ok(Request::None),
                }
            };
            let cpu = apic.cpu;
            match decision {
                Ok(Request::None) => {}
                Ok(Request::Fault) => {
                    vmcb.inject_exception(13, Some(0));
                    return Ok(());
                }
                Ok(Request::Nmi(cpus)) => {
                    for target in cpus.iter() {
                        root_nmi(target);
                    }
                }
                Ok(Request::Power(kind, cpus)) => {
                    // INIT and start-up IPIs for the root cell's own CPUs: CPU 0 (which
                    // Linux never restarts) keeps running; the others are asked.
                    for target in cpus.iter().filter(|&target| target != 0) {
                        request(target, kind);
                    }
                }
                Err(violation) => {
                    let _guard = crate::lock_console();
                    let _ = writeln!(
                        console,
                        "cellvisor: cell \"root\" (CPU {cpu}): local APIC write {value:#x} at offset {offset:#x}: {violation}: refused"
                    );
                }
            }
        }
        Some(_) => {}
    }
    complete(vmcb, regs, access, loaded);
    Ok(())
}

/// A root-cell access to the IOAPIC's page: decided by `cellvisor-apic` (every pin is the
/// root cell's while it runs alone) and done. What the policy refuses is reported.
fn emulate_ioapic(
    console: &mut Serial,
    cpu: u32,
    shared: &Shared,
    vmcb: &mut Vmcb<'_>,
    regs: &mut GuestRegisters,
) -> Result<(), EmulationError> {
    let offset = vmcb.u64_at(svm::offset::EXITINFO2) - ioapic::BASE;
    let (access, stored) = decode_access(vmcb, regs, &shared.map)?;
    let request = cellvisor_apic::Access {
        offset,
        size: access.size,
        write: stored.map(|value| value as u32),
    };
    let by = cellvisor_apic::Accessor {
        cell: cellvisor_cell::CellId::ROOT,
        cpus: &shared.cpus,
        cpu,
    };
    let outcome = {
        let topology = TOPOLOGY.lock();
        match topology.as_ref() {
            Some(topology) => ioapic::access(topology, by, request),
            None => Ok(cellvisor_apic::Outcome::Read(0)),
        }
    };
    let loaded = match outcome {
        Ok(cellvisor_apic::Outcome::Read(value)) => value,
        Ok(cellvisor_apic::Outcome::Written) => 0,
        Ok(cellvisor_apic::Outcome::Refused { read, why }) => {
            let _guard = crate::lock_console();
            let _ = writeln!(
                console,
                "cellvisor: cell \"root\" (CPU {cpu}): IOAPIC access at offset {offset:#x}: {why:?}: refused"
            );
            read
        }
        // The root cell's accesses are refused, never a violation.
        Err(_) => 0,
    };
    complete(vmcb, regs, access, loaded);
    Ok(())
}

/// CPUID as the CPU answers it, without SVM (the hypervisor's).
fn cpuid(vmcb: &mut Vmcb<'_>, regs: &mut GuestRegisters) {
    let leaf = vmcb.u64_at(svm::offset::RAX) as u32;
    let subleaf = regs.rcx as u32;
    let mut result = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    match leaf {
        // x2APIC (ECX bit 21): the root cell stays in xAPIC mode, whose page traps.
        1 => result.ecx &= !(1 << 21),
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
fn report(console: &mut Serial, cpu: u32, vmcb: &Vmcb<'_>, regs: &GuestRegisters, exit: ExitCode) {
    use svm::offset::*;
    let what = match exit {
        ExitCode::SHUTDOWN => "a triple fault (shutdown)",
        ExitCode::INVALID => "an invalid guest state (hypervisor bug)",
        _ => "an exit the hypervisor does not handle",
    };
    let _ = writeln!(
        console,
        "cellvisor: root cell stopped on CPU {cpu}: {what}: {exit}, exit information {:#x} {:#x}",
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
