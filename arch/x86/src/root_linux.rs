//! The root cell's Linux on the boot CPU, under SVM with nested paging: the bzImage and
//! initramfs from the Multiboot modules, the Linux boot protocol from `cellvisor-linux`, an
//! e820 map without the hypervisor's memory, and the exits a passed-through root cell takes.
//!
//! The root cell on x86 so far: every CPU (the others start when its kernel sends them INIT
//! and a start-up IPI, and CPU hotplug works the same way), its tables, books and management
//! interface from `cellvisor-core` ([`HV`]) and the system configuration (module 2). An
//! access to the hypervisor's memory is reported and answered with a general-protection
//! fault; a triple fault, an invalid state or an exit nothing handles is reported with the
//! vCPU's registers and code, and the CPU parked.

use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use cellvisor_apic::lapic::LapicViolation;
use cellvisor_apic::{IpiKind, Topology};
use cellvisor_config::CpuSet;
use cellvisor_sync::Mutex;

use cellvisor_cell::CellId;
use cellvisor_config::{MemoryFlags, SystemConfigView};
use cellvisor_core::{StartedBy, TrapReason};
use cellvisor_linux::memory_map::{Kind, MemoryMap};
use cellvisor_linux::x86::{BootParams, BzImage, BOOT_CS, BOOT_DS};
use cellvisor_paging::PhysAddr;

use crate::decode::{self, Direction, Source};
use crate::firmware::MAX_CPUS;
use crate::guest::{Exit, Guest, IoExit, NestedFault, Vcpu};
use crate::hv::{self, HV};
use crate::ioapic;
use crate::iomap::{cell_iopm, CELL_MSRPM, IOPM, MSRPM};
use crate::loader::Handoff;
use crate::page::Page;
use crate::pci;
use crate::permission::{intercept_msr, intercept_ports};
use crate::serial::Serial;
use crate::svm::{self, GuestRegisters, Vmcb, EFER};
use crate::vmcs::Vmcs;
use crate::walk;
use crate::xapic::{self, LocalApic, Request};

/// Where the zero page goes: low RAM, below the hypervisor's AP trampoline (0x8000).
const ZERO_PAGE: u64 = 0x7000;
/// Where the command line goes (at most 4095 bytes and a zero).
const CMDLINE: u64 = 0x6000;
/// The root cell's address space ID.
const ROOT_ASID: u32 = 1;

static HOST_SAVE: Page = Page::new();

/// Largest system configuration the hypervisor takes.
const CONFIG_CAPACITY: usize = 64 << 10;

/// The system configuration, copied out of its Multiboot module (root-cell RAM) at boot.
#[repr(C, align(4096))]
struct ConfigBuffer(UnsafeCell<[u8; CONFIG_CAPACITY]>);

// SAFETY: written once by the boot CPU before any other CPU looks at it, read-only after.
unsafe impl Sync for ConfigBuffer {}

static CONFIG: ConfigBuffer = ConfigBuffer(UnsafeCell::new([0; CONFIG_CAPACITY]));

/// The `EFER` bits the root cell may write: SCE, LME, LMA, NXE, FFXSR, TCE, AutoIBRS (AMD
/// APM Vol. 2 §3.1.7); anything else is a #GP, as on a CPU without SVM.
const EFER_WRITABLE: u64 = 1 | 1 << 8 | 1 << 10 | 1 << 11 | 1 << 14 | 1 << 15 | 1 << 21;
/// SVM's MSRs: VM_CR, IGNNE, SMM_CTL, VM_HSAVE_PA. The root cell has no SVM (CPUID says so),
/// so any access is a #GP; above all, it must not move the host save area, from which every
/// #VMEXIT restores the hypervisor's RIP and RSP.
const SVM_MSRS: [u32; 4] = [0xc001_0114, 0xc001_0115, 0xc001_0116, 0xc001_0117];
/// IA32_FEATURE_CONTROL (VMX's enable and lock).
const FEATURE_CONTROL: u32 = 0x3a;
/// The VMX capability MSRs, IA32_VMX_BASIC to IA32_VMX_VMFUNC.
const VMX_CAPABILITIES: core::ops::RangeInclusive<u32> = 0x480..=0x491;
/// `IA32_APIC_BASE`: writes exit, so that the root cell keeps its local APIC where it traps
/// and in xAPIC mode.
const APIC_BASE: u32 = 0x1b;
/// `IA32_APIC_BASE` bit 10: x2APIC mode.
const APIC_BASE_EXTD: u64 = 1 << 10;
/// `IA32_APIC_BASE` bits 51:12: the page.
const APIC_BASE_PAGE: u64 = 0x000f_ffff_ffff_f000;
/// `IA32_TSC_DEADLINE`.
const TSC_DEADLINE: u32 = 0x6e0;
/// `RFLAGS.IF`: interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;
/// `SLP_EN` in the ACPI PM1 control register: the write that enters a sleep state.
const SLP_EN: u64 = 1 << 13;

/// What a CPU of the root cell exited for, by reason.
#[derive(Debug)]
struct Exits {
    retried: AtomicU64,
    hlt: AtomicU64,
    mgmt: AtomicU64,
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
            retried: AtomicU64::new(0),
            hlt: AtomicU64::new(0),
            mgmt: AtomicU64::new(0),
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

    /// The counts: hlt, mgmt, apic, ioapic, pci, cpuid, msr, io, npf, svm, retried.
    fn get(&self) -> [u64; 11] {
        [
            &self.hlt,
            &self.mgmt,
            &self.apic,
            &self.ioapic,
            &self.pci,
            &self.cpuid,
            &self.msr,
            &self.io,
            &self.npf,
            &self.svm,
            &self.retried,
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
    /// No third Multiboot module.
    NoConfig,
    /// The system configuration module is larger than the hypervisor takes.
    ConfigSize(u64),
    /// The system configuration does not parse or check.
    Config(cellvisor_config::Error),
    /// The configuration's hypervisor memory does not hold the image.
    HypervisorRegion {
        /// The configuration's region.
        region: (u64, u64),
        /// The image, `.bss` included.
        image: (u64, u64),
    },
    /// RAM of the firmware's map that the root cell's configuration does not give it.
    RamNotConfigured(u64, u64),
    /// The root cell's tables or management interface.
    Install(cellvisor_core::MachineError),
    /// The root cell's books.
    Registry(cellvisor_cell::RootError),
    /// The command line with the management interface's address is too long.
    Cmdline,
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
            Self::NoConfig => f.write_str(
                "no system configuration: the third Multiboot module must be one (cellvisor-config compile)",
            ),
            Self::ConfigSize(size) => write!(
                f,
                "the system configuration (module 2) has {size} bytes; at most {CONFIG_CAPACITY} are taken"
            ),
            Self::Config(e) => write!(f, "the system configuration (module 2): {e}"),
            Self::HypervisorRegion { region, image } => write!(
                f,
                "system configuration: hypervisor memory [{:#x}, {:#x}) does not hold the image [{:#x}, {:#x})",
                region.0, region.1, image.0, image.1
            ),
            Self::RamNotConfigured(start, end) => write!(
                f,
                "the firmware's RAM [{start:#x}, {end:#x}) is neither the root cell's (a memory region without \"io\"), loadable nor the hypervisor's in the system configuration"
            ),
            Self::Install(e) => write!(f, "the root cell: {e}"),
            Self::Registry(e) => write!(f, "the root cell: {e}"),
            Self::Cmdline => f.write_str(
                "the command line and the management interface's address take more than 4095 bytes",
            ),
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

/// Copies the system configuration out of its Multiboot module into the hypervisor and
/// parses it.
pub fn system_config(handoff: &Handoff) -> Result<SystemConfigView<'static>, RootError> {
    let module = handoff.config.ok_or(RootError::NoConfig)?;
    let size = module.len() as usize;
    if size > CONFIG_CAPACITY {
        return Err(RootError::ConfigSize(module.len()));
    }
    let buffer = CONFIG.0.get().cast::<u8>();
    // SAFETY: the module lies below 4 GiB (checked by the loader), mapped one to one; the
    // buffer is the image's own, written here once by the boot CPU before any other CPU
    // reads it, and never again.
    let bytes = unsafe {
        core::ptr::copy_nonoverlapping(module.start as *const u8, buffer, size);
        core::slice::from_raw_parts(buffer.cast_const(), size)
    };
    SystemConfigView::parse(bytes).map_err(RootError::Config)
}

/// Whether `[start, end)` is all RAM the root cell's configuration gives it (regions without
/// `io` and not loadable); the first address that is not, if any.
fn first_unconfigured(config: &SystemConfigView<'_>, start: u64, end: u64) -> Option<u64> {
    let mut at = start;
    while at < end {
        let next = config
            .root_cell()
            .memory_regions()
            .filter(|r| !r.flags.intersects(MemoryFlags::IO | MemoryFlags::LOADABLE))
            .find(|r| (r.phys_start..r.phys_start.saturating_add(r.size)).contains(&at))
            .map(|r| r.phys_start.saturating_add(r.size));
        at = next?;
    }
    None
}

/// The root cell's CPUs: those of its configuration that run the hypervisor.
fn configured_cpus(config: &SystemConfigView<'_>, online: usize) -> u64 {
    config
        .root_cell()
        .cpus()
        .iter()
        .filter(|&cpu| (cpu as usize) < online.min(64))
        .fold(0, |mask, cpu| mask | 1 << cpu)
}

/// Loads the kernel and writes the zero page and the command line (with the management
/// interface's address appended), and builds the root cell's nested page tables and books
/// from the system configuration: its e820 map has the hypervisor's memory and the loadable
/// memory reserved, and every RAM range left must be the root cell's in the configuration.
pub fn prepare(
    handoff: &Handoff,
    config: &SystemConfigView<'static>,
    online: usize,
) -> Result<Prepared, RootError> {
    let kernel = handoff.kernel.ok_or(RootError::NoKernel)?;
    let image = BzImage::parse(kernel.bytes()).map_err(RootError::Image)?;
    let region = config.hypervisor_memory();
    let region = (region.start, region.start.saturating_add(region.size));
    let (image_start, image_end) = hypervisor_memory();
    if image_start < region.0 || image_end > region.1 {
        return Err(RootError::HypervisorRegion {
            region,
            image: (image_start, image_end),
        });
    }
    let mut map = handoff.map.clone();
    map.set(region.0, region.1 - region.0, Kind::Reserved)
        .map_err(RootError::Map)?;
    for loadable in config
        .root_cell()
        .memory_regions()
        .filter(|r| r.flags.contains(MemoryFlags::LOADABLE))
    {
        map.set(loadable.phys_start, loadable.size, Kind::Reserved)
            .map_err(RootError::Map)?;
    }
    for ram in map.ranges().iter().filter(|r| r.kind == Kind::Ram) {
        if let Some(at) = first_unconfigured(config, ram.start, ram.end()) {
            return Err(RootError::RamNotConfigured(at, ram.end()));
        }
    }

    let control = hv::CONTROL_PAGE.address();
    let data = hv::DATA_WINDOW.address();
    let mut cmdline = heapless::String::<4096>::new();
    write!(
        cmdline,
        "{} cellvisor.management={control:#x},{:#x},{data:#x},{:#x}",
        handoff.cmdline,
        cellvisor_abi::mgmt::PAGE_SIZE,
        hv::DATA_WINDOW_SIZE
    )
    .map_err(|_| RootError::Cmdline)?;
    let cmdline = cmdline.trim_start().as_bytes();
    if cmdline.len() > 0xfff {
        return Err(RootError::Cmdline);
    }
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
        .set_cmdline(CMDLINE, cmdline.len())
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
        core::ptr::copy_nonoverlapping(cmdline.as_ptr(), line, cmdline.len());
        line.add(cmdline.len()).write(0);
    }

    let tables = HV
        .install_root(
            config,
            hv::second_stage(),
            PhysAddr::new(hv::TABLE_POOL.as_ptr() as u64),
            hv::TABLE_FRAMES,
            configured_cpus(config, online),
            Some((data, hv::DATA_WINDOW_SIZE as u64)),
        )
        .map_err(RootError::Install)?;
    // The image is all hypervisor memory but the table pool (its `.bss` runs to the end).
    let memory_total = region.1 - region.0;
    let image_size = memory_total.saturating_sub((hv::TABLE_FRAMES * 4096) as u64);
    HV.init_management(
        cellvisor_core::Interface {
            control,
            data,
            data_size: hv::DATA_WINDOW_SIZE as u64,
            memory_total,
            image: image_size,
            cpus: online as u32,
        },
        config,
    )
    .map_err(RootError::Registry)?;
    Ok(Prepared {
        entry: load,
        tables: tables.root,
        map,
    })
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
    /// The CPUs running the hypervisor.
    online: usize,
}

static SHARED: spin::Once<Shared> = spin::Once::new();

/// The machine's CPUs and the logical IDs their software set, for the root cell's IPIs.
static TOPOLOGY: Mutex<Option<Topology>> = Mutex::new(None);

/// The root cell's CPUs just now (cells borrow some).
fn root_cpus() -> CpuSet {
    CpuSet::from_words([HV.cell(CellId::ROOT).cpus()])
}

/// What a CPU of the root cell has of its own.
struct PerCpu {
    vmcb: Page,
    host_state: Page,
    /// The cell running here sent this CPU an NMI (the hypervisor sent it, and the NMI
    /// exit it causes injects it).
    guest_nmi: AtomicBool,
    /// Its exits since boot.
    exits: Exits,
    /// Violations it reported.
    reports: AtomicU32,
}

static CPUS: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        vmcb: Page::new(),
        host_state: Page::new(),
        guest_nmi: AtomicBool::new(false),
        exits: Exits::new(),
        reports: AtomicU32::new(0),
    }
}; MAX_CPUS];

/// Sends a cell's NMI to its `cpu`: marked, so that the NMI exit it causes injects it.
fn guest_nmi(cpu: u32) {
    let (Some(per_cpu), Some(apic_id)) = (CPUS.get(cpu as usize), hv::apic_id(cpu as usize)) else {
        return;
    };
    per_cpu.guest_nmi.store(true, Ordering::SeqCst);
    xapic::send_physical(apic_id, xapic::ICR_NMI);
}

/// The root cell's INIT or start-up IPI from CPU `from` for its CPU `cpu`. INIT stops the
/// vCPU: it powers off and parks ([`HV`]'s park loop), and this CPU waits for that (about
/// 100 ms at most), so that the start-up IPIs after it find the CPU off. A start-up IPI is
/// the core's power-on at the vector's page, in real mode; for a CPU that runs it is
/// ignored, as the hardware does.
fn request(from: u32, cpu: u32, kind: IpiKind) {
    let cpu = cpu as usize;
    match kind {
        IpiKind::Init if !HV.stop_cpu(cpu) => {
            let _guard = crate::lock_console();
            let _ = writeln!(
                crate::console(),
                "cellvisor: cell \"root\" (CPU {from}): CPU {cpu} did not stop for its INIT within 100 ms"
            );
        }
        IpiKind::Startup(vector) => {
            let caller = HV.owner(from as usize);
            let _ = HV.power_on(caller, cpu, u64::from(vector) << 12, 0, 0x1000);
        }
        _ => {}
    }
}

/// An INIT or start-up IPI from CPU `from` of `cell` (not the root cell) for its CPU `cpu`.
/// INIT stops the vCPU and waits (about 100 ms at most) until it is parked, off; a start-up
/// IPI powers it on in real mode at the vector's page, and is ignored for a CPU that runs
/// or is being started, as the hardware ignores it.
fn cell_request(from: u32, cell: CellId, cpu: u32, kind: IpiKind) {
    let result = match kind {
        IpiKind::Init => HV.init_cpu(cell, cpu as usize).map(|parked| {
            if !parked {
                let name = HV.name_of(from as usize);
                HV.note(
                    from as usize,
                    cell,
                    format_args!(
                        "cellvisor: cell \"{name}\" (CPU {from}): CPU {cpu} did not stop for its INIT within 100 ms\n"
                    ),
                );
            }
        }),
        IpiKind::Startup(vector) => {
            match HV.power_on(cell, cpu as usize, u64::from(vector) << 12, 0, 0x1000) {
                Err(cellvisor_core::PowerOnError::Busy(_)) => Ok(()),
                other => other,
            }
        }
        IpiKind::Fixed(_) | IpiKind::Nmi => Ok(()),
    };
    if let Err(error) = result {
        let name = HV.name_of(from as usize);
        HV.note(
            from as usize,
            cell,
            format_args!(
                "cellvisor: cell \"{name}\" (CPU {from}): {kind:?} for CPU {cpu}: {error:?}: ignored\n"
            ),
        );
    }
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
    let config = match system_config(handoff) {
        Ok(config) => config,
        Err(e) => {
            let _ = writeln!(console, "cellvisor: root cell: {e}");
            return;
        }
    };
    // The ECAM window below 4 GiB (the boot map's), or none: then mechanism #1 alone.
    let ecam = crate::firmware::ecam()
        .ok()
        .filter(|ecam| ecam.base + ecam.size() <= 1 << 32);
    let online = apic_ids.len();
    let prepared = match prepare(handoff, &config, online) {
        Ok(prepared) => prepared,
        Err(e) => {
            let _ = writeln!(console, "cellvisor: root cell: {e}");
            return;
        }
    };
    if hv::vmx() {
        if let Err(e) = crate::vmcs::enable(0) {
            let _ = writeln!(console, "cellvisor: root cell: VMX: {e}");
            return;
        }
    } else if let Err(e) = svm::enable(&HOST_SAVE) {
        let _ = writeln!(console, "cellvisor: root cell: {}", RootError::Svm(e));
        return;
    }
    *TOPOLOGY.lock() = Some(topology);
    ioapic::probe();
    pci::init(match ecam {
        Some(ecam) => pci::Hardware::Ecam(ecam),
        None => pci::Hardware::Ports,
    });
    let power = power_control();
    fill_permissions(power, &config);
    let shared = SHARED.call_once(|| Shared {
        ecam,
        map: prepared.map.clone(),
        tables: prepared.tables.as_u64(),
        power,
        online,
    });
    let (hyp_start, hyp_end) = hypervisor_memory();
    let _ = writeln!(
        console,
        "cellvisor: root cell \"{}\": Linux at {:#x} on {} CPUs, {} e820 ranges, hypervisor {hyp_start:#x}-{:#x} reserved, management page {:#x}, {} of {} table frames",
        config.root_cell().name(),
        prepared.entry,
        root_cpus().len(),
        prepared.map.ranges().len(),
        hyp_end - 1,
        hv::CONTROL_PAGE.address(),
        HV.frame_usage().0,
        HV.frame_usage().1,
    );
    HV.cpu(0).power.set_on();
    let mut regs = GuestRegisters {
        rsi: ZERO_PAGE,
        ..GuestRegisters::default()
    };
    if hv::vmx() {
        let vmcs = Vmcs::new(&CPUS[0].vmcb).and_then(|mut vmcs| {
            vmcs.reset_protected_mode(
                prepared.entry,
                (BOOT_CS, BOOT_DS),
                shared.tables,
                root_bitmaps(),
            )?;
            Ok(vmcs)
        });
        match vmcs {
            Ok(mut vmcs) => {
                let _ = vcpu(console, 0, shared, &mut vmcs, &mut regs);
            }
            Err(e) => {
                let _ = writeln!(console, "cellvisor: root cell: VMX: {e}");
            }
        }
        return;
    }
    let mut vmcb = Vmcb::new(&CPUS[0].vmcb).with_host_save(&CPUS[0].host_state);
    vmcb.reset_protected_mode(prepared.entry, (BOOT_CS, BOOT_DS), shared.tables, ROOT_ASID);
    root_intercepts(&mut vmcb);
    let _ = vcpu(console, 0, shared, &mut vmcb, &mut regs);
}

/// The root cell's permission maps for VMX.
fn root_bitmaps() -> crate::vmcs::Bitmaps {
    crate::vmcs::Bitmaps {
        io: IOPM.address(),
        msr: crate::iomap::VMX_MSR_BITMAP.address(),
    }
}

/// An application processor, with SVM on: it waits in the core's park loop until its cell
/// gives it a vCPU: the root cell's kernel with INIT and a start-up IPI (CPU hotplug), then
/// runs it from the start-up vector until the next INIT, which powers it off and parks it
/// again.
pub fn application_processor(cpu: u32, console: &mut Serial) -> ! {
    let Some(per_cpu) = CPUS.get(cpu as usize) else {
        crate::halt()
    };
    loop {
        let Some(entry) = HV.park(cpu as usize) else {
            continue;
        };
        let Some(shared) = SHARED.get() else { continue };
        if entry.cell != CellId::ROOT {
            run_cell(console, cpu, entry);
            continue;
        }
        let mut regs = GuestRegisters::default();
        let segment = (entry.pc >> 4) as u16;
        let result = if hv::vmx() {
            let vmcs = Vmcs::new(&per_cpu.vmcb).and_then(|mut vmcs| {
                vmcs.reset_real_mode_at(segment, 0, shared.tables, root_bitmaps())?;
                Ok(vmcs)
            });
            match vmcs {
                Ok(mut vmcs) => vcpu(console, cpu, shared, &mut vmcs, &mut regs),
                Err(e) => {
                    let _guard = crate::lock_console();
                    let _ = writeln!(console, "cellvisor: root cell (CPU {cpu}): VMX: {e}");
                    Err(Stopped)
                }
            }
        } else {
            let mut vmcb = Vmcb::new(&per_cpu.vmcb).with_host_save(&per_cpu.host_state);
            vmcb.reset_real_mode_at(segment, 0, shared.tables, ROOT_ASID);
            root_intercepts(&mut vmcb);
            vcpu(console, cpu, shared, &mut vmcb, &mut regs)
        };
        if result.is_err() {
            crate::halt()
        }
        HV.cpu(cpu as usize).power.power_off();
    }
}

/// A vCPU of a cell other than the root cell on `cpu`, from its reset address in 32-bit
/// protected mode with flat segments (the inmate loads its own GDT and page tables), until
/// it is stopped or breaks the rules: then it returns, and the CPU parks.
///
/// What a cell's vCPU may do: its memory (nested tables), its I/O ports (its permission
/// map), its local APIC as the policy of `cellvisor-apic` allows for a cell (timer, EOI,
/// IPIs to its own CPUs) and `IA32_TSC_DEADLINE`, CPUID, `EFER`, HLT. Anything else (another port, an MSR, memory
/// outside its configuration, a triple fault) stops the cell and is reported.
fn run_cell(console: &mut Serial, cpu: u32, entry: cellvisor_core::Entry) {
    let cell = entry.cell;
    let Some(per_cpu) = CPUS.get(cpu as usize) else {
        return;
    };
    let Some(iopm) = cell_iopm(cell) else {
        return;
    };
    let tables = hv::active_tables(cpu as usize);
    // An NMI the cell sent to the vCPU this CPU ran before is not the new one's.
    per_cpu.guest_nmi.store(false, Ordering::SeqCst);
    // The cell's start enters 32-bit protected mode at its reset address; a start-up IPI
    // from another of its CPUs enters real mode at the vector's page.
    let startup = entry.by == StartedBy::PowerOn;
    let segment = (entry.pc >> 4) as u16;
    if hv::vmx() {
        let bitmaps = crate::vmcs::Bitmaps {
            io: iopm.address(),
            msr: crate::iomap::VMX_CELL_MSR_BITMAP.address(),
        };
        let vmcs = Vmcs::new(&per_cpu.vmcb).and_then(|mut vmcs| {
            if startup {
                vmcs.reset_real_mode_at(segment, 0, tables, bitmaps)?;
            } else {
                vmcs.reset_protected_mode(entry.pc, (BOOT_CS, BOOT_DS), tables, bitmaps)?;
            }
            Ok(vmcs)
        });
        match vmcs {
            Ok(mut vmcs) => cell_vcpu(console, cpu, cell, &mut vmcs),
            Err(e) => {
                let name = HV.name_of(cpu as usize);
                HV.note(
                    cpu as usize,
                    cell,
                    format_args!(
                        "cellvisor: cell \"{name}\" (CPU {cpu}): VMX: {e}: cell stopped\n"
                    ),
                );
                let _ = HV.violation(cpu as usize);
            }
        }
        return;
    }
    let mut vmcb = Vmcb::new(&per_cpu.vmcb).with_host_save(&per_cpu.host_state);
    if startup {
        vmcb.reset_real_mode_at(segment, 0, tables, cell.0 + 1);
    } else {
        vmcb.reset_protected_mode(entry.pc, (BOOT_CS, BOOT_DS), tables, cell.0 + 1);
    }
    set_intercepts(&mut vmcb, CELL_MSRPM.address(), iopm.address());
    cell_vcpu(console, cpu, cell, &mut vmcb);
}

/// Runs a cell's vCPU (set up by [`run_cell`]) until it is stopped or breaks the rules.
fn cell_vcpu<V: Vcpu>(console: &mut Serial, cpu: u32, cell: CellId, vmcb: &mut V) {
    let kick = &hv::KICKS[cpu as usize];
    let counters = &HV.cpu(cpu as usize).counters;
    let cell_cpus = CpuSet::from_words([HV.cell(cell).cpus()]);
    let mut apic = LocalApic::new(cpu, cell_cpus, false);
    let mut regs = GuestRegisters::default();
    let mut idle_hlt = false;
    let ecam = SHARED.get().and_then(|shared| shared.ecam);
    let stop = |what: fmt::Arguments<'_>| {
        let name = HV.name_of(cpu as usize);
        HV.note(
            cpu as usize,
            cell,
            format_args!("cellvisor: cell \"{name}\" (CPU {cpu}): {what}: cell stopped\n"),
        );
        let _ = HV.violation(cpu as usize);
    };
    let per_cpu = &CPUS[cpu as usize];
    loop {
        // An NMI from another CPU of the cell, unless an exception is being injected.
        if !vmcb.event_pending() && per_cpu.guest_nmi.swap(false, Ordering::SeqCst) {
            vmcb.inject_nmi();
        }
        counters.measure(hv::now(), 64);
        let exit = vmcb.run(&mut regs, &kick.kicked);
        let exited = hv::now();
        if exit.is_some() {
            vmcb.flush_tlb_at_entry(false);
        }
        if matches!(exit, None | Some(Exit::Nmi))
            && kick.kicked.swap(false, Ordering::SeqCst)
            && HV.take_stop(cpu as usize)
        {
            return;
        }
        let Some(exit) = exit else { continue };
        after_exit(console, cpu, vmcb, &regs, exit, &mut idle_hlt);
        counters.start(exited);
        let apic_page = |gpa: u64| (xapic::BASE..xapic::BASE + 0x1000).contains(&gpa);
        let ioapic_page = |gpa: u64| (ioapic::BASE..ioapic::BASE + 0x1000).contains(&gpa);
        let reason = match exit {
            Exit::Fault(f) if apic_page(f.gpa) => {
                if matches!(f.gpa & 0xfff, 0x300 | 0x310) {
                    TrapReason::SgiRegister
                } else {
                    TrapReason::Redistributor
                }
            }
            Exit::Fault(f) if ioapic_page(f.gpa) => TrapReason::Distributor,
            Exit::Cpuid | Exit::Msr { .. } => TrapReason::OtherSysreg,
            Exit::Nmi => TrapReason::Irq,
            // PCI configuration space: emulated, counted with the rest.
            Exit::Io(io) if (pci::PORTS.0..=pci::PORTS.1).contains(&io.port) => TrapReason::Other,
            Exit::Fault(f) if ecam.is_some_and(|e| e.contains(f.gpa)) => TrapReason::Other,
            Exit::Hlt => TrapReason::Other,
            _ => TrapReason::OutsideConfig,
        };
        HV.count(cpu as usize, reason);
        match exit {
            Exit::Nmi => {}
            Exit::Hlt => {
                // Idle or parked (interrupts disabled): the HLT runs in the guest, where an
                // interrupt or a kick ends it.
                run_hlt_in_guest(vmcb, &mut idle_hlt);
            }
            Exit::Cpuid => {
                cpuid(vmcb, &mut regs);
                vmcb.skip(2);
            }
            Exit::Msr { write } if regs.rcx as u32 == EFER => msr(vmcb, &mut regs, write),
            Exit::Msr { write } => {
                stop(format_args!(
                    "{} of MSR {:#x} at RIP {:#x}",
                    if write { "write" } else { "read" },
                    regs.rcx as u32,
                    vmcb.rip()
                ));
                return;
            }
            Exit::Io(io)
                if (pci::PORTS.0..=pci::PORTS.1).contains(&io.port)
                    && io.port != pci::RESET_CONTROL
                    && !io.string =>
            {
                let rax = vmcb.rax();
                let mask = io_mask(io.size);
                let write = (!io.input).then_some((rax & mask) as u32);
                match config_port(console, (cpu, cell), io.port, io.size, write) {
                    Ok(loaded) => {
                        if io.input {
                            vmcb.set_rax(rax & !mask | loaded & mask);
                        }
                        vmcb.skip(usize::from(io.len));
                    }
                    Err(violation) => {
                        stop(format_args!("{violation} at RIP {:#x}", vmcb.rip()));
                        return;
                    }
                }
            }
            Exit::Io(io) => {
                stop(format_args!(
                    "{} of I/O port {:#x} at RIP {:#x}: not the cell's",
                    if io.input { "read" } else { "write" },
                    io.port,
                    vmcb.rip()
                ));
                return;
            }
            Exit::Fault(f) if apic_page(f.gpa) => {
                apic.cell_cpus = CpuSet::from_words([HV.cell(cell).cpus()]);
                match emulate_apic(console, vmcb, &mut regs, GuestRam::Cell(cell), &mut apic) {
                    Ok(None) => {}
                    Ok(Some((offset, value, violation))) => {
                        stop(format_args!(
                            "local APIC write {value:#x} at offset {offset:#x}: {violation}"
                        ));
                        return;
                    }
                    Err(e) => {
                        stop(format_args!(
                            "local APIC access at RIP {:#x} not emulated: {e}",
                            vmcb.rip()
                        ));
                        return;
                    }
                }
            }
            Exit::Fault(f) if ioapic_page(f.gpa) => {
                let cell_cpus = CpuSet::from_words([HV.cell(cell).cpus()]);
                match emulate_ioapic(
                    console,
                    cpu,
                    (cell, &cell_cpus),
                    GuestRam::Cell(cell),
                    vmcb,
                    &mut regs,
                ) {
                    Ok(None) => {}
                    Ok(Some(violation)) => {
                        stop(format_args!("IOAPIC access: {violation}"));
                        return;
                    }
                    Err(e) => {
                        stop(format_args!(
                            "IOAPIC access at RIP {:#x} not emulated: {e}",
                            vmcb.rip()
                        ));
                        return;
                    }
                }
            }
            Exit::Fault(f) if ecam.is_some_and(|e| e.contains(f.gpa)) => {
                let Some(window) = ecam else { continue };
                let ram = GuestRam::Cell(cell);
                if let Err(e) = emulate_ecam(console, (cpu, cell), window, ram, vmcb, &mut regs) {
                    stop(format_args!("ECAM access at RIP {:#x}: {e}", vmcb.rip()));
                    return;
                }
            }
            Exit::Fault(f) => {
                stop(format_args!(
                    "{} at {:#x} (RIP {:#x}) is outside its memory",
                    f.access(),
                    f.gpa,
                    vmcb.rip()
                ));
                return;
            }
            Exit::Shutdown => {
                stop(format_args!("triple fault at RIP {:#x}", vmcb.rip()));
                return;
            }
            other => {
                stop(format_args!(
                    "exit ({other}) at RIP {:#x} not handled",
                    vmcb.rip()
                ));
                return;
            }
        }
    }
}

/// The VMCB's intercepts for a root-cell vCPU (see [`set_intercepts`]).
fn root_intercepts(vmcb: &mut Vmcb<'_>) {
    set_intercepts(vmcb, MSRPM.address(), IOPM.address());
}

/// The VMCB's intercepts of every vCPU: CPUID, HLT, shutdown, NMIs (kicks), MSRs and I/O by
/// the permission maps at `msrpm` and `iopm`; VMRUN.
fn set_intercepts(vmcb: &mut Vmcb<'_>, msrpm: u64, iopm: u64) {
    let misc = svm::INTERCEPT_CPUID
        | svm::INTERCEPT_HLT
        | svm::INTERCEPT_SHUTDOWN
        | svm::INTERCEPT_NMI
        | svm::INTERCEPT_MSR
        | svm::INTERCEPT_IOIO;
    vmcb.set_u32(svm::offset::INTERCEPT_MISC1, misc);
    vmcb.set_u32(svm::offset::INTERCEPT_MISC2, svm::INTERCEPT_VMRUN);
    vmcb.set_u64(svm::offset::MSRPM_BASE_PA, msrpm);
    vmcb.set_u64(svm::offset::IOPM_BASE_PA, iopm);
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
fn trapped_page(shared: &Shared, gpa: u64) -> Option<TrappedPage> {
    let page = |base: u64| (base..base + 0x1000).contains(&gpa);
    if page(xapic::BASE) {
        Some(TrappedPage::LocalApic)
    } else if page(ioapic::BASE) {
        Some(TrappedPage::IoApic)
    } else if shared.ecam.is_some_and(|ecam| ecam.contains(gpa)) {
        Some(TrappedPage::Ecam)
    } else {
        None
    }
}

/// What every exit of a vCPU starts with: the stack canary checked (an overflow is reported
/// with the vCPU's state and parks the CPU), an event the exit interrupted delivered again at
/// the next entry (a handler may replace it with an exception of its own), and after an idle
/// HLT that ran in the guest, HLT trapping again.
fn after_exit(
    console: &mut Serial,
    cpu: u32,
    vmcb: &mut impl Guest,
    regs: &GuestRegisters,
    exit: Exit,
    idle_hlt: &mut bool,
) {
    if crate::smp::stack_overflowed(cpu as usize) {
        let _guard = crate::lock_console();
        let _ = writeln!(
            console,
            "cellvisor: FATAL: CPU {cpu}: the hypervisor's stack overflowed (its lowest word was overwritten): parked"
        );
        report(console, cpu, vmcb, regs, exit);
        crate::halt();
    }
    vmcb.reinject_interrupted_event();
    if core::mem::take(idle_hlt) {
        vmcb.set_hlt_exiting(true);
    }
}

/// Lets the next entry run an HLT in the guest (the intercept off until the next exit).
fn run_hlt_in_guest(vmcb: &mut impl Guest, idle_hlt: &mut bool) {
    *idle_hlt = true;
    vmcb.set_hlt_exiting(false);
}

/// The core's reason for an exit, for its counters (`cellvisor cell stats`).
fn trap_reason(shared: &Shared, exit: Exit) -> TrapReason {
    match exit {
        Exit::Fault(NestedFault { gpa, .. }) => {
            if HV.mgmt_contains(gpa) {
                return TrapReason::Management;
            }
            match trapped_page(shared, gpa) {
                // The interrupt command register (its low and high halves).
                Some(TrappedPage::LocalApic) if matches!(gpa & 0xfff, 0x300 | 0x310) => {
                    TrapReason::SgiRegister
                }
                Some(TrappedPage::LocalApic) => TrapReason::Redistributor,
                Some(TrappedPage::IoApic) => TrapReason::Distributor,
                Some(TrappedPage::Ecam) => TrapReason::Other,
                None if HV.maps(CellId::ROOT, gpa) => TrapReason::Other,
                None => TrapReason::OutsideConfig,
            }
        }
        Exit::Cpuid | Exit::Msr { .. } => TrapReason::OtherSysreg,
        Exit::Nmi => TrapReason::Irq,
        Exit::Virtualization => TrapReason::Smccc,
        _ => TrapReason::Other,
    }
}

/// The vCPU stopped for good: reported, the CPU parks.
#[derive(Debug)]
struct Stopped;

/// Runs a root-cell vCPU on `cpu` until an INIT for it (`Ok`) or an exit it cannot take
/// (`Err`, reported).
fn vcpu<V: Vcpu>(
    console: &mut Serial,
    cpu: u32,
    shared: &Shared,
    vmcb: &mut V,
    regs: &mut GuestRegisters,
) -> Result<(), Stopped> {
    let per_cpu = &CPUS[cpu as usize];
    let kick = &hv::KICKS[cpu as usize];
    let mut apic = LocalApic::new(cpu, root_cpus(), true);
    let exits = &per_cpu.exits;
    let counters = &HV.cpu(cpu as usize).counters;
    let mut idle_hlt = false;
    loop {
        // The root cell's NMI, unless an exception is being injected (it waits a round).
        if !vmcb.event_pending() && per_cpu.guest_nmi.swap(false, Ordering::SeqCst) {
            vmcb.inject_nmi();
        }
        // The root cell's tables changed since this CPU's last entry (a cell took or gave
        // back memory): its cached translations go.
        if hv::root_entering(cpu as usize) {
            vmcb.flush_tlb_at_entry(true);
        }
        // The previous exit's handler is done: its cost is the TSC from the exit to here
        // (instructions, under `-icount shift=0`).
        counters.measure(hv::now(), 64);
        let exit = vmcb.run(regs, &kick.kicked);
        let exited = hv::now();
        hv::root_left(cpu as usize);
        // The first entry flushed this CPU's TLB (the reset asks for it); later entries keep
        // it unless the tables change.
        if exit.is_some() {
            vmcb.flush_tlb_at_entry(false);
        }
        // A kick (before entering, or as the NMI exit): a stop request (the root cell's INIT
        // for this CPU) ends this vCPU.
        if matches!(exit, None | Some(Exit::Nmi))
            && kick.kicked.swap(false, Ordering::SeqCst)
            && HV.take_stop(cpu as usize)
        {
            return Ok(());
        }
        let Some(exit) = exit else { continue };
        after_exit(console, cpu, vmcb, regs, exit, &mut idle_hlt);
        counters.start(exited);
        HV.count(cpu as usize, trap_reason(shared, exit));
        if exit == Exit::Hlt {
            Exits::count(&exits.hlt);
            if vmcb.rflags() & RFLAGS_IF == 0 {
                // HLT with interrupts disabled: the CPU stops for good (Linux's offline CPU,
                // a halt or a panic); only INIT would wake it. Its vCPU powers off, and the
                // CPU parks, where a cell may take it and the root cell's INIT and start-up
                // IPI find it.
                return Ok(());
            }
            // An idle HLT: run in the guest, once, where it waits for an interrupt (the exit
            // that interrupt causes, at the latest its EOI's, makes HLT trap again).
            run_hlt_in_guest(vmcb, &mut idle_hlt);
            continue;
        }
        // A register page that traps: decoded and emulated.
        if let Exit::Fault(NestedFault { gpa, .. }) = exit {
            if HV.mgmt_contains(gpa) {
                Exits::count(&exits.mgmt);
                if let Err(e) =
                    emulate_management(cpu, gpa, vmcb, regs, GuestRam::Root(&shared.map))
                {
                    vmcb.inject_exception(13, Some(0));
                    if may_report(console, cpu, per_cpu) {
                        let _guard = crate::lock_console();
                        let _ = writeln!(
                            console,
                            "cellvisor: cell \"root\" (CPU {cpu}): management page access at RIP {:#x} not emulated: {e}: #GP injected",
                            vmcb.rip()
                        );
                    }
                }
                continue;
            }
            if let Some(page) = trapped_page(shared, gpa) {
                let (counter, result) = match page {
                    TrappedPage::LocalApic => (&exits.apic, {
                        apic.cell_cpus = root_cpus();
                        emulate_apic(console, vmcb, regs, GuestRam::Root(&shared.map), &mut apic)
                            .map(|_| ())
                    }),
                    TrappedPage::IoApic => (
                        &exits.ioapic,
                        emulate_ioapic(
                            console,
                            cpu,
                            (CellId::ROOT, &root_cpus()),
                            GuestRam::Root(&shared.map),
                            vmcb,
                            regs,
                        )
                        .map(|_| ()),
                    ),
                    TrappedPage::Ecam => (
                        &exits.pci,
                        shared.ecam.map_or(Ok(()), |ecam| {
                            let ram = GuestRam::Root(&shared.map);
                            emulate_ecam(console, (cpu, CellId::ROOT), ecam, ram, vmcb, regs)
                        }),
                    ),
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
                            vmcb.rip()
                        );
                    }
                }
                continue;
            }
        }
        match exit {
            // A kick or the root cell's NMI, both handled around the entry. An NMI from
            // elsewhere (the chipset) is dropped.
            Exit::Nmi => {}
            Exit::Cpuid => {
                Exits::count(&exits.cpuid);
                cpuid(vmcb, regs);
                vmcb.skip(2);
            }
            Exit::Msr { write } => {
                Exits::count(&exits.msr);
                msr(vmcb, regs, write);
            }
            Exit::Io(access) => io(console, vmcb, cpu, shared, access),
            Exit::Virtualization => {
                // SVM is not the root cell's: #UD, as on a CPU without it.
                Exits::count(&exits.svm);
                vmcb.inject_exception(6, None);
            }
            Exit::Fault(fault) => {
                // A fault in the break-before-make window of a change to the root cell's
                // tables (a cell taking or giving back memory): the address is mapped once
                // the change is done, and the access is retried.
                if HV.maps(CellId::ROOT, fault.gpa) {
                    Exits::count(&exits.retried);
                    continue;
                }
                Exits::count(&exits.npf);
                // The root cell touched memory it does not have (the hypervisor's): it is
                // told with a general-protection fault at the access, which kills a user
                // process and oopses the kernel, as a bus error does on Arm.
                if may_report(console, cpu, per_cpu) {
                    let _guard = crate::lock_console();
                    let _ = writeln!(
                        console,
                        "cellvisor: cell \"root\" (CPU {cpu}): {} at {:#x} (RIP {:#x}, {}, fault code {:#x}) is outside its memory: #GP injected",
                        fault.access(),
                        fault.gpa,
                        vmcb.rip(),
                        if fault.user { "user" } else { "kernel" },
                        fault.raw
                    );
                }
                vmcb.inject_exception(13, Some(0));
            }
            _ => {
                let _guard = crate::lock_console();
                report(console, cpu, vmcb, regs, exit);
                if let Ok((bytes, len)) = fetch(vmcb, GuestRam::Root(&shared.map)) {
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
/// the ports of [`crate::iomap::always_trapped`] and every port the configuration does not give the root
/// cell.
fn fill_permissions(power: Option<u16>, config: &SystemConfigView<'_>) {
    // SAFETY: the boot CPU alone, before any root-cell vCPU runs; nothing else writes the
    // maps.
    let (msrpm, iopm) = unsafe { (MSRPM.bytes(), IOPM.bytes()) };
    // SAFETY: as above.
    let cell_msrpm = unsafe { CELL_MSRPM.bytes() };
    cell_msrpm.fill(0xff);
    // IA32_TSC_DEADLINE arms the local APIC timer of the CPU it is written on, which is the
    // cell's while the cell runs it (x86 timer-demo).
    let _ = crate::permission::pass_msr(cell_msrpm, TSC_DEADLINE);
    if let Some(port) = power {
        crate::iomap::POWER_PORT.store(u32::from(port), Ordering::Release);
    }
    for port in 0..0x1_0000u32 {
        let owned = config
            .root_cell()
            .port_ranges()
            .any(|r| (r.base..r.base.saturating_add(r.size)).contains(&port));
        if !owned {
            intercept_ports(iopm, port as u16, 1);
        }
    }
    for msr in core::iter::once(EFER).chain(SVM_MSRS) {
        // Every one of them is in the map's ranges (checked by the unit tests' layout).
        let _ = intercept_msr(msrpm, msr, true, true);
    }
    let _ = intercept_msr(msrpm, APIC_BASE, false, true);
    // VMX's own MSRs (its feature control and capabilities): the root cell has no VMX.
    for msr in core::iter::once(FEATURE_CONTROL).chain(VMX_CAPABILITIES) {
        let _ = intercept_msr(msrpm, msr, true, true);
    }
    // SAFETY: as above.
    let (vmx_msr, vmx_cell_msr) = unsafe {
        (
            crate::iomap::VMX_MSR_BITMAP.bytes(),
            crate::iomap::VMX_CELL_MSR_BITMAP.bytes(),
        )
    };
    *vmx_msr = crate::permission::vmx_msr_bitmap(msrpm);
    *vmx_cell_msr = crate::permission::vmx_msr_bitmap(cell_msrpm);
    if let Some(port) = power {
        intercept_ports(iopm, port, 2);
    }
    let (first, last) = pci::PORTS;
    intercept_ports(iopm, first, last - first + 1);
}

/// An RDMSR or WRMSR that exited: `EFER` without SVME, a #GP for SVM's MSRs and for MSRs
/// outside the map (which always exit; the CPU has none of them that the root cell needs).
fn msr(vmcb: &mut impl Guest, regs: &mut GuestRegisters, write: bool) {
    let msr = regs.rcx as u32;
    let value = (regs.rdx & 0xffff_ffff) << 32 | (vmcb.rax() & 0xffff_ffff);
    match (msr, write) {
        (EFER, false) => {
            let efer = vmcb.efer();
            vmcb.set_rax(efer & 0xffff_ffff);
            regs.rdx = efer >> 32;
        }
        (EFER, true) if value & !EFER_WRITABLE == 0 => {
            vmcb.set_efer(value);
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
    vmcb.skip(2);
}

/// Prints the exits of every CPU of the root cell: the total, then one line per CPU.
fn report_exits(console: &mut Serial, shared: &Shared, why: fmt::Arguments<'_>) {
    let mut total = [0u64; 11];
    for per_cpu in CPUS.iter().take(shared.online) {
        for (sum, count) in total.iter_mut().zip(per_cpu.exits.get()) {
            *sum += count;
        }
    }
    let line = |console: &mut Serial, counts: [u64; 11]| {
        let [hlt, mgmt, apic, ioapic, pci, cpuid, msr, io, npf, svm, retried] = counts;
        let _ = writeln!(
            console,
            "hlt {hlt}, mgmt {mgmt}, apic {apic}, ioapic {ioapic}, pci {pci}, cpuid {cpuid}, msr {msr}, io {io}, npf {npf}, svm {svm}, npf retried {retried}"
        );
    };
    let _guard = crate::lock_console();
    let _ = write!(
        console,
        "cellvisor: root cell: {why}: exits on {} CPUs: ",
        shared.online
    );
    line(console, total);
    for (cpu, per_cpu) in CPUS.iter().enumerate().take(shared.online) {
        let _ = write!(console, "  CPU {cpu}: ");
        line(console, per_cpu.exits.get());
    }
}

/// An IN or OUT that exited: the PM1a control port (done for the root cell; a write that
/// enters a sleep state is reported with the exits first), the PCI configuration ports
/// (decided by `cellvisor-pci`), or the reset control register (done).
fn io(console: &mut Serial, vmcb: &mut impl Guest, cpu: u32, shared: &Shared, access: IoExit) {
    use x86_64::instructions::port::Port;
    let IoExit {
        port,
        size,
        input,
        string,
        len,
    } = access;
    let exits = &CPUS[cpu as usize].exits;
    if (pci::PORTS.0..=pci::PORTS.1).contains(&port) && port != pci::RESET_CONTROL {
        Exits::count(&exits.pci);
    } else {
        Exits::count(&exits.io);
    }
    let mask = io_mask(size);
    let rax = vmcb.rax();
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
    } else if (pci::PORTS.0..=pci::PORTS.1).contains(&port) {
        let write = (!input).then_some(stored as u32);
        // The root cell's accesses are refused (and reported), never a violation.
        config_port(console, (cpu, CellId::ROOT), port, size, write).unwrap_or(mask)
    } else {
        // A port the root cell does not have (a cell's, or not in its configuration):
        // reads all ones, writes dropped, reported.
        if may_report(console, cpu, &CPUS[cpu as usize]) {
            let _guard = crate::lock_console();
            let _ = writeln!(
                console,
                "cellvisor: cell \"root\" (CPU {cpu}): {} of I/O port {port:#x}: not the root cell's: {}",
                if input { "read" } else { "write" },
                if input { "reads all ones" } else { "dropped" }
            );
        }
        mask
    };
    if input {
        vmcb.set_rax(rax & !mask | loaded & mask);
    }
    vmcb.skip(usize::from(len));
}

/// The bits of RAX an IN or OUT of `size` bytes (1, 2 or 4) moves.
fn io_mask(size: u8) -> u64 {
    if size == 4 {
        0xffff_ffff
    } else {
        (1u64 << (8 * u32::from(size))) - 1
    }
}

/// An IN (`write` `None`) or OUT of `size` bytes by CPU `cpu` of `cell` at a port of
/// configuration mechanism #1 (not the reset control register): what an IN reads, or the
/// violation that stops a cell.
fn config_port(
    console: &mut Serial,
    (cpu, cell): (u32, CellId),
    port: u16,
    size: u8,
    write: Option<u32>,
) -> Result<u64, cellvisor_pci::PciViolation> {
    let mask = io_mask(size);
    if (pci::PORTS.0..pci::PORTS.0 + 4).contains(&port) && size != 4 {
        // Only a whole dword is CONFIG_ADDRESS: the hardware passes narrower accesses on as
        // plain I/O, which reaches nothing here (Linux's type 1 probe writes a byte to
        // 0xCFB). Reads all ones, writes dropped, as on the hardware.
        return Ok(mask);
    }
    let value = pci_access(console, cpu, cell, pci::Target::Port(port), size, write)?;
    Ok(value.map_or(mask, u64::from))
}

/// An access of CPU `cpu` of `cell` to PCI configuration space, decided by `cellvisor-pci`
/// (the cell's functions answer, every other one reads as absent). Returns what a read reads
/// (`None`: all ones), or, for a cell other than the root cell, the violation that stops
/// it. What the policy refuses the root cell is reported and dropped.
fn pci_access(
    console: &mut Serial,
    cpu: u32,
    cell: CellId,
    target: pci::Target,
    size: u8,
    write: Option<u32>,
) -> Result<Option<u32>, cellvisor_pci::PciViolation> {
    let outcome = {
        let topology = TOPOLOGY.lock();
        let Some(topology) = topology.as_ref() else {
            return Ok(None);
        };
        let cpus = CpuSet::from_words([HV.cell(cell).cpus()]);
        let msi = pci::X86Msi {
            topology,
            cpus: &cpus,
        };
        pci::access(&msi, cell, cpu, target, size, write)
    };
    match outcome? {
        cellvisor_pci::Outcome::Read(value) => Ok(Some(value)),
        cellvisor_pci::Outcome::Written => Ok(Some(0)),
        cellvisor_pci::Outcome::Refused(why) => {
            if may_report(console, cpu, &CPUS[cpu as usize]) {
                let _guard = crate::lock_console();
                let _ = writeln!(
                    console,
                    "cellvisor: cell \"root\" (CPU {cpu}): PCI configuration {target:?}: {why}: refused"
                );
            }
            Ok(None)
        }
    }
}

/// An access of CPU `cpu` of `cell` to the ECAM window `ecam` (which no second stage maps):
/// decoded and decided like the ports.
fn emulate_ecam(
    console: &mut Serial,
    (cpu, cell): (u32, CellId),
    ecam: pci::Ecam,
    ram: GuestRam<'_>,
    vmcb: &mut impl Guest,
    regs: &mut GuestRegisters,
) -> Result<(), EmulationError> {
    let offset = vmcb.fault_address() - ecam.base;
    let (access, stored) = decode_access(vmcb, regs, ram)?;
    let size = access.size.min(4);
    let write = stored.map(|value| value as u32);
    let loaded = pci_access(console, cpu, cell, pci::Target::Ecam(offset), size, write)
        .map_err(EmulationError::Pci)?
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
    /// A cell's configuration access that breaks the partition.
    Pci(cellvisor_pci::PciViolation),
}

impl fmt::Display for EmulationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLongMode => f.write_str("the vCPU is not in 64-bit mode"),
            Self::Fetch(e) => write!(f, "the instruction cannot be read: {e}"),
            Self::Decode(e) => write!(f, "{e}"),
            Self::Pci(e) => write!(f, "{e}"),
        }
    }
}

/// Reads the instruction at the guest's RIP through its page tables, from its RAM only.
fn fetch(
    vmcb: &impl Guest,
    ram: GuestRam<'_>,
) -> Result<([u8; decode::MAX_LEN], usize), EmulationError> {
    if !vmcb.in_64_bit_code() {
        return Err(EmulationError::NotLongMode);
    }
    let [_, _, cr3, _] = vmcb.control_registers();
    let rip = vmcb.rip();
    let read_entry = |gpa: u64| {
        let pa = ram.physical(gpa).filter(|_| gpa.is_multiple_of(8))?;
        // SAFETY: 8 aligned bytes of the guest's RAM (checked), below 4 GiB, mapped one to
        // one in the hypervisor; page tables the guest may change at any time, which only
        // makes the translation the guest's problem.
        Some(unsafe { (pa as *const u64).read_volatile() })
    };
    let mut bytes = [0u8; decode::MAX_LEN];
    let mut len = 0;
    while len < bytes.len() {
        let linear = rip.wrapping_add(len as u64);
        let pa = match walk::translate(cr3, linear, read_entry) {
            Ok(gpa) => match ram.physical(gpa) {
                Some(pa) => pa,
                None if len == 0 => {
                    return Err(EmulationError::Fetch(walk::WalkError::Unreadable(gpa)));
                }
                None => break,
            },
            Err(e) if len == 0 => return Err(EmulationError::Fetch(e)),
            Err(_) => break,
        };
        let in_page = (0x1000 - (pa & 0xfff)) as usize;
        for i in 0..in_page.min(bytes.len() - len) {
            // SAFETY: a byte of the guest's RAM (checked: the page of `pa`), mapped one to one.
            bytes[len + i] = unsafe { ((pa + i as u64) as *const u8).read_volatile() };
        }
        len += in_page.min(bytes.len() - len);
    }
    Ok((bytes, len))
}

/// Where a guest's RAM is, for reading its instructions and page tables.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GuestRam<'a> {
    /// The root cell's: identity, the RAM of the memory map it got.
    Root(&'a MemoryMap),
    /// Another cell's: through its nested tables, RAM only.
    Cell(CellId),
}

impl GuestRam<'_> {
    /// The physical address of guest-physical `gpa`, if it is the guest's RAM below 4 GiB
    /// (the hypervisor's identity map).
    fn physical(self, gpa: u64) -> Option<u64> {
        let pa = match self {
            Self::Root(map) => map.is_all(gpa & !0xfff, 0x1000, Kind::Ram).then_some(gpa)?,
            Self::Cell(cell) => HV.ram_address(cell, gpa)?,
        };
        (pa < 1 << 32).then_some(pa)
    }
}

/// General-purpose register `n` (0 RAX ... 15 R15) of the vCPU.
fn register(vmcb: &impl Guest, regs: &GuestRegisters, n: u8) -> u64 {
    match n {
        0 => vmcb.rax(),
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => vmcb.rsp(),
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        n => regs.r[usize::from(n & 7)],
    }
}

/// Writes `value` of `size` bytes to register `n` as a load does: 4 bytes zero-extend, 1
/// and 2 bytes keep the rest (`high_byte`: AH, CH, DH or BH).
fn set_register(
    vmcb: &mut impl Guest,
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
        0 => vmcb.set_rax(new),
        1 => regs.rcx = new,
        2 => regs.rdx = new,
        3 => regs.rbx = new,
        4 => vmcb.set_rsp(new),
        5 => regs.rbp = new,
        6 => regs.rsi = new,
        7 => regs.rdi = new,
        n => regs.r[usize::from(n & 7)] = new,
    }
}

/// A trapped access to an emulated register page: the instruction at RIP decoded, and the
/// value it stores (`None` for a load).
fn decode_access(
    vmcb: &impl Guest,
    regs: &GuestRegisters,
    ram: GuestRam<'_>,
) -> Result<(decode::Access, Option<u64>), EmulationError> {
    let (bytes, len) = fetch(vmcb, ram)?;
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
fn complete(vmcb: &mut impl Guest, regs: &mut GuestRegisters, access: decode::Access, value: u32) {
    complete_wide(vmcb, regs, access, u64::from(value));
}

/// [`complete`] for registers up to 64 bits wide.
fn complete_wide(
    vmcb: &mut impl Guest,
    regs: &mut GuestRegisters,
    access: decode::Access,
    value: u64,
) {
    if let Direction::Read(n) = access.direction {
        set_register(vmcb, regs, n, access.size, access.high_byte, value);
    }
    vmcb.skip(access.len);
}

/// An access to a CPU's local APIC page: decided by `cellvisor-apic` and done. Registers
/// are 32 bits wide: other sizes read 0 and write nothing. A write the policy refuses is
/// skipped: reported here for the root cell, returned for another cell (which is stopped).
fn emulate_apic(
    console: &mut Serial,
    vmcb: &mut impl Guest,
    regs: &mut GuestRegisters,
    ram: GuestRam<'_>,
    apic: &mut LocalApic,
) -> Result<Option<(u64, u32, LapicViolation)>, EmulationError> {
    let offset = vmcb.fault_address() - xapic::BASE;
    let (access, stored) = decode_access(vmcb, regs, ram)?;
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
                    return Ok(None);
                }
                Ok(Request::Nmi(cpus)) => {
                    for target in cpus.iter() {
                        guest_nmi(target);
                    }
                }
                // INIT and start-up IPIs between a cell's own CPUs (the policy let only
                // those through): INIT stops the vCPU, off; a start-up IPI is the core's
                // power-on at the vector's page. A CPU does not INIT or start itself.
                Ok(Request::Power(kind, cpus)) if !apic.root => {
                    let cell = HV.owner(cpu as usize);
                    for target in cpus.iter().filter(|&target| target != cpu) {
                        cell_request(cpu, cell, target, kind);
                    }
                }
                Ok(Request::Power(kind, cpus)) => {
                    // INIT and start-up IPIs for the root cell's own CPUs: CPU 0 (which
                    // Linux never restarts) keeps running; the others are asked.
                    for target in cpus.iter().filter(|&target| target != 0) {
                        request(cpu, target, kind);
                    }
                }
                Err(violation) if !apic.root => {
                    complete(vmcb, regs, access, 0);
                    return Ok(Some((offset, value, violation)));
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
    Ok(None)
}

/// A root-cell access to the management control page: decoded, and done by the core.
fn emulate_management(
    cpu: u32,
    gpa: u64,
    vmcb: &mut impl Guest,
    regs: &mut GuestRegisters,
    ram: GuestRam<'_>,
) -> Result<(), EmulationError> {
    let (access, stored) = decode_access(vmcb, regs, ram)?;
    let loaded = match stored {
        Some(value) => HV.mgmt_access(cpu as usize, gpa, true, value),
        None => HV.mgmt_access(cpu as usize, gpa, false, 0),
    };
    complete_wide(vmcb, regs, access, loaded.unwrap_or(0));
    Ok(())
}

/// An access to the IOAPIC's page by `cell` (CPUs `cells_cpus`) on `cpu`: decided by
/// `cellvisor-apic` (pin owners, destinations within the cell's CPUs) and done. The root
/// cell's refused accesses are reported and dropped; another cell's violation is returned
/// (the cell is stopped).
fn emulate_ioapic(
    console: &mut Serial,
    cpu: u32,
    (cell, cell_cpus): (CellId, &CpuSet),
    ram: GuestRam<'_>,
    vmcb: &mut impl Guest,
    regs: &mut GuestRegisters,
) -> Result<Option<cellvisor_apic::IoApicViolation>, EmulationError> {
    let offset = vmcb.fault_address() - ioapic::BASE;
    let (access, stored) = decode_access(vmcb, regs, ram)?;
    let request = cellvisor_apic::Access {
        offset,
        size: access.size,
        write: stored.map(|value| value as u32),
    };
    let by = cellvisor_apic::Accessor {
        cell,
        cpus: cell_cpus,
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
        Err(violation) if cell != CellId::ROOT => {
            complete(vmcb, regs, access, 0);
            return Ok(Some(violation));
        }
        // The root cell's accesses are refused, never a violation.
        Err(_) => 0,
    };
    complete(vmcb, regs, access, loaded);
    Ok(None)
}

/// CPUID as the CPU answers it, without SVM or VMX (the hypervisor's), and on VMX without
/// the instructions a guest may not run there.
fn cpuid(vmcb: &mut impl Guest, regs: &mut GuestRegisters) {
    let leaf = vmcb.rax() as u32;
    let subleaf = regs.rcx as u32;
    let mut result = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    match leaf {
        // x2APIC (ECX bit 21): the root cell stays in xAPIC mode, whose page traps. MONITOR
        // and MWAIT (ECX bit 3): an offline CPU of Linux then waits in HLT with interrupts
        // disabled, which the hypervisor sees (`vcpu`).
        // VMX (ECX bit 5): not the root cell's either. OSXSAVE (ECX bit 27) is the guest's
        // CR4.OSXSAVE (bit 18), not the hypervisor's, which CPUID run here reports.
        1 => {
            result.ecx &= !(1 << 21 | 1 << 5 | 1 << 3 | 1 << 27);
            if vmcb.control_registers()[3] & 1 << 18 != 0 {
                result.ecx |= 1 << 27;
            }
        }
        // SVM (ECX bit 2). On VMX, RDTSCP (EDX bit 27) unless the guest may run it.
        0x8000_0001 => {
            result.ecx &= !(1 << 2);
            if hv::vmx() && !crate::vmcs::guest_features().0 {
                result.edx &= !(1 << 27);
            }
        }
        // On VMX, INVPCID (EBX bit 10) unless the guest may run it.
        7 if subleaf == 0 && hv::vmx() && !crate::vmcs::guest_features().1 => {
            result.ebx &= !(1 << 10);
        }
        // On VMX, XSAVES (EAX bit 3) unless the guest may run it.
        0xd if subleaf == 1 && hv::vmx() && !crate::vmcs::guest_features().2 => {
            result.eax &= !(1 << 3);
        }
        // The SVM feature leaf.
        0x8000_000a => {
            result.eax = 0;
            result.ebx = 0;
            result.ecx = 0;
            result.edx = 0;
        }
        _ => {}
    }
    vmcb.set_rax(u64::from(result.eax));
    regs.rbx = u64::from(result.ebx);
    regs.rcx = u64::from(result.ecx);
    regs.rdx = u64::from(result.edx);
}

/// Reports an exit the root cell may not take, with its state.
fn report(console: &mut Serial, cpu: u32, vmcb: &impl Guest, regs: &GuestRegisters, exit: Exit) {
    let what = match exit {
        Exit::Shutdown => "a triple fault (shutdown)",
        Exit::Invalid => "an invalid guest state (hypervisor bug)",
        _ => "an exit the hypervisor does not handle",
    };
    let [info1, info2] = vmcb.exit_information();
    let _ = writeln!(
        console,
        "cellvisor: root cell stopped on CPU {cpu}: {what}: {exit}, exit information {info1:#x} {info2:#x}"
    );
    let _ = writeln!(
        console,
        "  RIP {:#018x} RSP {:#018x} RFLAGS {:#x} CS {:#x} CPL {}",
        vmcb.rip(),
        vmcb.rsp(),
        vmcb.rflags(),
        vmcb.cs_selector(),
        vmcb.cpl()
    );
    let [cr0, cr2, cr3, cr4] = vmcb.control_registers();
    let _ = writeln!(
        console,
        "  CR0 {cr0:#x} CR2 {cr2:#x} CR3 {cr3:#x} CR4 {cr4:#x} EFER {:#x}",
        vmcb.efer()
    );
    let _ = writeln!(
        console,
        "  RAX {:#018x} RBX {:#018x} RCX {:#018x} RDX {:#018x}",
        vmcb.rax(),
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
