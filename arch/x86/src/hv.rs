//! The x86 implementation of `cellvisor-core`'s architecture traits for [`X86`], and the one
//! hypervisor value [`HV`].
//!
//! | trait | here |
//! |---|---|
//! | `Cpus` | the index from the local APIC's ID, the TSC (calibrated against the PIT at boot), HLT woken by an NMI ([`crate::wait`]) |
//! | `Memory` | the boot map's identity map of the first 4 GiB; coherent, nothing to clean |
//! | `Translation` | AMD nested page tables or Intel EPT; TLB flushes at the next entry (ASID, INVEPT) |
//! | `Vcpus` | the local APIC reset on retire; a fresh VMCB on every entry from the park loop |
//! | `InterruptChip` | IOAPIC pins ([`crate::ioapic`]) |
//! | `IoPorts` | the root cell's and the cells' I/O permission maps ([`crate::iomap`]) |
//! | `PciFunctions` | the configuration space's books ([`crate::pci::PCI`]) |
//! | `Output` | the 8250 ([`crate::serial`]), copied into the core's ring |

use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use cellvisor_abi::comm;
use cellvisor_cell::CellId;
use cellvisor_core::arch::{
    Cpus, InterruptChip, IoPorts, Memory, Output, PciFunctions, Translation, Vcpus,
};
use cellvisor_core::Hypervisor;
use cellvisor_paging::{Ept, GuestPhysAddr, LargePages, LinearMemory, Mapping, Npt, PhysAddr};

use crate::firmware::MAX_CPUS;
use crate::page::Page;
use crate::stage2::SecondStage;

/// The architecture: AMD SVM with nested paging, the local APIC and one IOAPIC, the first
/// 4 GiB identity mapped.
#[derive(Debug)]
pub struct X86;

/// The hypervisor: all architecture-neutral state, in `.bss` until boot.
pub static HV: Hypervisor<X86> = Hypervisor::new(X86);

/// Frames for the cells' nested page tables and communication pages.
pub const TABLE_FRAMES: usize = cellvisor_core::TABLE_FRAMES;

/// The table frames, in the image's `.bss` (inside the configuration's hypervisor region).
pub static TABLE_POOL: [Page; TABLE_FRAMES] = [const { Page::new() }; TABLE_FRAMES];

/// The management control page: an address in hypervisor memory that no cell maps, so that
/// each access of the root cell traps. Never read or written as memory.
pub static CONTROL_PAGE: Page = Page::new();

/// Size of the management data window.
pub const DATA_WINDOW_SIZE: usize = 1 << 20;

/// The management data window, shared with root userspace (mapped into the root cell).
#[repr(C, align(4096))]
pub struct DataWindow(core::cell::UnsafeCell<[u8; DATA_WINDOW_SIZE]>);

// SAFETY: the hypervisor reaches the window only through `Memory`'s volatile copies, by
// address; no reference into it is ever made.
unsafe impl Sync for DataWindow {}

impl core::fmt::Debug for DataWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DataWindow({:#x})", self.address())
    }
}

impl DataWindow {
    /// Its physical address.
    pub fn address(&self) -> u64 {
        self.0.get() as u64
    }
}

/// See [`DataWindow`].
pub static DATA_WINDOW: DataWindow = DataWindow(core::cell::UnsafeCell::new([0; DATA_WINDOW_SIZE]));

/// Each hypervisor CPU's local APIC ID (index = hypervisor CPU), set at boot.
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
/// CPUs in [`APIC_IDS`].
static CPU_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Records the CPUs' APIC IDs, boot CPU first (the boot CPU, before any other runs).
pub fn set_apic_ids(ids: &[u32]) {
    for (slot, &id) in APIC_IDS.iter().zip(ids) {
        slot.store(id, Ordering::Relaxed);
    }
    CPU_COUNT.store(ids.len().min(MAX_CPUS), Ordering::Release);
}

/// The APIC ID of hypervisor CPU `cpu`.
pub fn apic_id(cpu: usize) -> Option<u32> {
    (cpu < CPU_COUNT.load(Ordering::Acquire)).then(|| APIC_IDS[cpu].load(Ordering::Relaxed))
}

/// The hypervisor index of the running CPU.
pub fn cpu_index() -> usize {
    let me = crate::smp::apic_id();
    let count = CPU_COUNT.load(Ordering::Acquire);
    APIC_IDS[..count]
        .iter()
        .position(|id| id.load(Ordering::Relaxed) == me)
        .unwrap_or(0)
}

/// What other CPUs ask of one: a wake-up for its wait, and a kick out of its vCPU.
#[derive(Debug)]
pub struct Kick {
    /// Non-zero: the wait looks at its condition again ([`crate::wait::wait`]).
    wake: AtomicU32,
    /// The vCPU loop looks at the core's requests (a stop, a TLB flush) after its next exit;
    /// also the world switch's abort flag.
    pub kicked: AtomicBool,
}

/// Each CPU's [`Kick`].
pub static KICKS: [Kick; MAX_CPUS] = [const {
    Kick {
        wake: AtomicU32::new(0),
        kicked: AtomicBool::new(false),
    }
}; MAX_CPUS];

/// Kicks `cpu`: both flags set, then an NMI, which ends its HLT or its guest.
pub fn kick(cpu: usize) {
    let (Some(kick), Some(apic_id)) = (KICKS.get(cpu), apic_id(cpu)) else {
        return;
    };
    kick.wake.store(1, Ordering::SeqCst);
    kick.kicked.store(true, Ordering::SeqCst);
    crate::xapic::send_physical(apic_id, crate::xapic::ICR_NMI);
}

/// TSC ticks per second, from [`calibrate`].
/// Whether the CPUs run guests with Intel VMX (else AMD SVM), set once at boot.
static VMX: AtomicBool = AtomicBool::new(false);

/// Says which extension runs guests: VMX (`true`) or SVM; set by the boot CPU before any
/// table is built.
pub fn use_vmx(vmx: bool) {
    VMX.store(vmx, Ordering::Release);
}

/// Whether guests run on VMX (else SVM).
pub fn vmx() -> bool {
    VMX.load(Ordering::Acquire)
}

/// The second-stage format of the extension in use: EPT as the CPU reports it, or NPT with
/// 2 MiB and 1 GiB pages.
pub fn second_stage() -> SecondStage {
    if vmx() {
        // SAFETY: VMX is in use, so IA32_VMX_EPT_VPID_CAP exists; reading it has no effect.
        let capabilities = unsafe { x86_64::registers::model_specific::Msr::new(0x48c).read() };
        SecondStage::Ept(Ept::from_capabilities(capabilities))
    } else {
        SecondStage::Npt(Npt::new(LargePages::ALL))
    }
}

static TSC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);

/// The TSC.
pub fn now() -> u64 {
    // SAFETY: RDTSC reads a counter; CR4.TSD is clear in the hypervisor.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC's frequency against the PIT's channel 2 (1.193182 MHz): 50 ms with the
/// speaker gate on and the speaker off. The boot CPU, before the root cell owns the PIT.
pub fn calibrate() -> u64 {
    use x86_64::instructions::port::Port;
    const PIT_HZ: u64 = 1_193_182;
    const COUNT: u16 = (PIT_HZ / 20) as u16;
    let (mut control, mut channel2, mut gate) = (
        Port::<u8>::new(0x43),
        Port::<u8>::new(0x42),
        Port::<u8>::new(0x61),
    );
    // SAFETY: the PIT and port 0x61 are the machine's, and nothing else uses them yet.
    let hz = unsafe {
        let old = gate.read();
        // Gate on, speaker off.
        gate.write(old & !0x02 | 0x01);
        // Channel 2, lobyte/hibyte, mode 0 (OUT goes high at terminal count), binary.
        control.write(0b1011_0000);
        channel2.write(COUNT as u8);
        channel2.write((COUNT >> 8) as u8);
        let start = now();
        let mut spins = 0u64;
        // OUT2 is bit 5 of port 0x61.
        while gate.read() & 0x20 == 0 && spins < 100_000_000 {
            spins += 1;
        }
        let ticks = now() - start;
        gate.write(old);
        ticks * 20
    };
    let hz = if hz < 1_000_000 { 1_000_000_000 } else { hz };
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}

/// Sleeps until `done` holds or the TSC passes `deadline`. Without a deadline the CPU halts
/// between kicks; with one it spins (the local APIC timer is the root cell's).
pub fn wait_until(deadline: Option<u64>, done: &mut dyn FnMut() -> bool) -> bool {
    let Some(kick) = KICKS.get(cpu_index()) else {
        return done();
    };
    loop {
        // Cleared before looking: a kick after this is seen by the wait.
        kick.wake.store(0, Ordering::SeqCst);
        if done() {
            return true;
        }
        match deadline {
            Some(deadline) if now() >= deadline => return false,
            Some(_) => core::hint::spin_loop(),
            None => crate::wait::wait(&kick.wake),
        }
    }
}

impl Cpus for X86 {
    fn cpu_index(&self) -> usize {
        cpu_index()
    }

    fn now(&self) -> u64 {
        now()
    }

    fn frequency(&self) -> u64 {
        TSC_HZ.load(Ordering::Relaxed).max(1)
    }

    fn kick(&self, cpu: usize) {
        kick(cpu);
    }

    fn wait_until(&self, deadline: Option<u64>, done: &mut dyn FnMut() -> bool) -> bool {
        wait_until(deadline, done)
    }
}

/// Whether `[at, at + len)` lies in the boot map's identity map (the first 4 GiB).
fn mapped(at: PhysAddr, len: u64) -> bool {
    at.as_u64()
        .checked_add(len)
        .is_some_and(|end| end <= 1 << 32)
}

/// [`cellvisor_core::arch::volatile_copy`] for ranges the caller checked with [`mapped`].
fn volatile_copy(to: *mut u8, from: *const u8, len: usize) {
    // SAFETY: the core passes ranges it checked (data window, cell RAM, communication
    // pages), never overlapping ones, and the callers below checked that they lie in the
    // boot map's identity map.
    unsafe { cellvisor_core::arch::volatile_copy(to, from, len) }
}

impl Memory for X86 {
    fn read(&self, from: PhysAddr, out: &mut [u8]) {
        if mapped(from, out.len() as u64) {
            volatile_copy(out.as_mut_ptr(), from.as_u64() as *const u8, out.len());
        } else {
            out.fill(0);
        }
    }

    fn write(&self, to: PhysAddr, bytes: &[u8]) {
        if mapped(to, bytes.len() as u64) {
            volatile_copy(to.as_u64() as *mut u8, bytes.as_ptr(), bytes.len());
        }
    }

    fn fill(&self, to: PhysAddr, byte: u8, len: u64) {
        if mapped(to, len) {
            // SAFETY: a range the core checked, inside the identity map; no reference to it.
            unsafe { core::ptr::write_bytes(to.as_u64() as *mut u8, byte, len as usize) };
        }
    }

    fn copy(&self, to: PhysAddr, from: PhysAddr, len: u64) {
        if mapped(to, len) && mapped(from, len) {
            volatile_copy(
                to.as_u64() as *mut u8,
                from.as_u64() as *const u8,
                len as usize,
            );
        }
    }

    fn read_u32(&self, at: PhysAddr) -> u32 {
        if !mapped(at, 4) {
            return 0;
        }
        // SAFETY: an aligned word of a communication page, in the identity map.
        unsafe { (at.as_u64() as *const u32).read_volatile() }
    }

    fn write_u32(&self, at: PhysAddr, value: u32) {
        if mapped(at, 4) {
            // SAFETY: as in `read_u32`; x86 stores are seen by other CPUs in order.
            unsafe { (at.as_u64() as *mut u32).write_volatile(value) };
        }
    }

    fn clean(&self, _at: PhysAddr, _len: u64) {
        // x86 caches are coherent with every CPU's accesses, cached or not.
    }
}

/// The root cell's nested tables changed this often; each CPU flushes its ASID when its count
/// is behind ([`root_tlb_current`]).
static ROOT_TABLES_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Per CPU: the generation of the root cell's tables its TLB holds, and whether it runs a
/// root-cell vCPU just now.
struct RootTlb {
    seen: AtomicU64,
    in_guest: AtomicBool,
}

static ROOT_TLB: [RootTlb; MAX_CPUS] = [const {
    RootTlb {
        seen: AtomicU64::new(0),
        in_guest: AtomicBool::new(false),
    }
}; MAX_CPUS];

/// Before entering a root-cell vCPU on `cpu`: marks it in the guest and returns whether its
/// TLB must be flushed first (the tables changed since its last entry).
pub fn root_entering(cpu: usize) -> bool {
    let Some(tlb) = ROOT_TLB.get(cpu) else {
        return true;
    };
    tlb.in_guest.store(true, Ordering::SeqCst);
    let generation = ROOT_TABLES_GENERATION.load(Ordering::SeqCst);
    tlb.seen.swap(generation, Ordering::SeqCst) != generation
}

/// After a root-cell vCPU's exit on `cpu`.
pub fn root_left(cpu: usize) {
    if let Some(tlb) = ROOT_TLB.get(cpu) {
        tlb.in_guest.store(false, Ordering::SeqCst);
    }
}

impl Translation for X86 {
    type Format = SecondStage;
    type Tables = LinearMemory;

    fn table_memory(&self) -> LinearMemory {
        // SAFETY: the hypervisor runs identity mapped over the first 4 GiB (boot.rs), and the
        // table pool is hypervisor memory used for nothing else.
        unsafe { LinearMemory::new(0) }
    }

    fn flush_root(&self) {
        // Every root-cell CPU flushes its ASID at its next entry; one in its guest now is
        // kicked out, and waited for, so that none uses a translation it lost after this
        // returns.
        let generation = ROOT_TABLES_GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
        let me = cpu_index();
        let count = CPU_COUNT.load(Ordering::Acquire);
        for (cpu, tlb) in ROOT_TLB.iter().enumerate().take(count) {
            if cpu == me || !HV.root_owns(cpu) {
                continue;
            }
            let behind = || {
                tlb.in_guest.load(Ordering::SeqCst) && tlb.seen.load(Ordering::SeqCst) < generation
            };
            if behind() {
                kick(cpu);
                // Long enough for a vCPU thread of an emulator on a loaded host.
                let deadline = HV.deadline_in(1000);
                while behind() && now() < deadline {
                    core::hint::spin_loop();
                }
                if behind() {
                    print(format_args!(
                        "cellvisor: CPU {me}: root CPU {cpu} did not leave its guest within 1 s for a TLB flush\n"
                    ));
                }
            }
        }
    }

    fn flush_cell(&self, _cell: CellId) {
        // Nothing to do now: a CPU entering a fresh vCPU flushes its whole TLB at the first
        // entry (`activate`), so no translation of the slot's previous cell survives.
    }
}

/// Per CPU: the nested tables the next vCPU from the park loop runs on.
static ACTIVE_TABLES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// The tables [`Vcpus::activate`] chose for `cpu`.
pub fn active_tables(cpu: usize) -> u64 {
    ACTIVE_TABLES
        .get(cpu)
        .map_or(0, |t| t.load(Ordering::Acquire))
}

impl Vcpus for X86 {
    fn cell_start(&self) -> cellvisor_core::arch::CellStart {
        // As on a PC: the first CPU runs, the others wait for INIT and a start-up IPI.
        cellvisor_core::arch::CellStart::FirstCpu
    }

    fn retire(&self, _cpu: usize) {
        // The local APIC as after INIT: timer stopped, LVTs masked, nothing pending.
        crate::xapic::init_reset();
    }

    fn activate(&self, cpu: usize, _cell: CellId, tables: PhysAddr) {
        // The vCPU is built fresh from a reset VMCB (no register of the previous one kept),
        // whose first entry flushes this CPU's TLB.
        if let Some(slot) = ACTIVE_TABLES.get(cpu) {
            slot.store(tables.as_u64(), Ordering::Release);
        }
    }
}

impl InterruptChip for X86 {
    fn move_irqs(&self, from: CellId, to: CellId, irqs: &[u32]) -> Result<(), &'static str> {
        crate::ioapic::transfer(from, to, irqs)
    }

    fn cell_window(&self) -> Option<Mapping<GuestPhysAddr>> {
        None
    }

    fn platform(&self, cpus: u64, console: (u32, u64)) -> comm::Platform {
        comm::Platform {
            gic_version: 0.into(),
            uart_kind: console.0.into(),
            gicd: 0.into(),
            gicr_or_gicc: crate::xapic::BASE.into(),
            uart: console.1.into(),
            timer_frequency: self.frequency().into(),
            cpus: cpus.count_ones().into(),
            reserved: 0.into(),
        }
    }
}

impl IoPorts for X86 {
    fn move_ports(
        &self,
        from: CellId,
        to: CellId,
        base: u32,
        count: u32,
    ) -> Result<(), &'static str> {
        if base.saturating_add(count) > 0x1_0000 {
            return Err("ports beyond 0xffff");
        }
        match (from, to) {
            (CellId::ROOT, CellId::ROOT) => {}
            (CellId::ROOT, cell) => {
                crate::iomap::move_root_ports(base, count, false);
                crate::iomap::move_cell_ports(cell, base, count, true);
            }
            (cell, CellId::ROOT) => {
                crate::iomap::move_cell_ports(cell, base, count, false);
                crate::iomap::move_root_ports(base, count, true);
            }
            _ => return Err("ports move only between the root cell and another cell"),
        }
        Ok(())
    }
}

impl PciFunctions for X86 {
    fn move_pci(
        &self,
        from: CellId,
        to: CellId,
        device: cellvisor_config::PciAddress,
    ) -> Result<(), &'static str> {
        use cellvisor_pci::DeviceError;
        if device.domain != 0 {
            return Err("only PCI segment 0 is emulated");
        }
        let mut pci = crate::pci::PCI.lock();
        let Some((config, hw)) = pci.as_mut() else {
            return Err("the machine has no PCI configuration space");
        };
        match (from, to) {
            (CellId::ROOT, CellId::ROOT) => Ok(()),
            (CellId::ROOT, cell) => {
                config
                    .assign(hw, cell, &[device.bdf])
                    .map_err(|error| match error {
                        DeviceError::Taken { .. } => "the function belongs to another cell",
                        DeviceError::Absent(_) => "no such function (vendor ID 0xffff)",
                        DeviceError::Full => "too many PCI functions given to cells",
                        DeviceError::ToRoot => "the root cell has every function already",
                    })
            }
            (cell, CellId::ROOT) => {
                if config.release_function(hw, cell, device.bdf) {
                    Ok(())
                } else {
                    Err("the function is not the cell's")
                }
            }
            _ => Err("PCI functions move only between the root cell and another cell"),
        }
    }
}

impl Output for X86 {
    fn print(&self, args: core::fmt::Arguments<'_>) {
        print(args);
    }

    fn exclusive(&self, f: &mut dyn FnMut()) {
        let _guard = crate::lock_console();
        f();
    }
}

/// Prints to the console and into the core's ring (unless this CPU's ring flag is off).
pub fn print(args: core::fmt::Arguments<'_>) {
    let _guard = crate::lock_console();
    let mut console = crate::console();
    let _ = console.write_fmt(args);
    if !HV.ring_off(cpu_index()) {
        let mut ring = HV.ring();
        let _ = ring.write_fmt(args);
    }
}
