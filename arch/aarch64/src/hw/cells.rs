//! Cells at run time: which cell each CPU runs, the stage-2 tables of every cell, the
//! park loop where a CPU without a vCPU to run sleeps (in WFI, see [`super::wait`]), and
//! stopping CPUs.
//!
//! The bookkeeping (who owns what, states, rollback) is `cellvisor-cell`'s; this module
//! applies its decisions to the machine through [`Machine`], its `Partition`.

use super::exception::TrapFrame;
use super::{cache, gic, wait};
use crate::board::MAX_CPUS;
use crate::frames::FramePool;
use cellvisor_abi::comm::{CommRegion, Platform};
use cellvisor_abi::CellState;
use cellvisor_config::MemoryFlags;
use cellvisor_paging::{
    Access, Attributes, Cacheability, FrameAllocator, GuestPhysAddr, LinearMemory, MapMode,
    Mapping, MemoryType, NotLive, PageTable, PhysAddr, Stage2, Stale, TableMemory, TlbInvalidate,
};
use cellvisor_sync::Mutex;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use spin::Once;
use zerocopy::IntoBytes;

/// Cells the hypervisor runs at once, the root cell included.
pub const MAX_CELLS: usize = 8;
/// Frames for stage-2 tables and communication regions, from hypervisor memory.
pub const TABLE_FRAMES: usize = 1024;

/// The stage-2 tables of all cells and the frames they come from.
pub struct Tables {
    /// Free and used frames.
    pub frames: FramePool<TABLE_FRAMES>,
    /// The format every cell uses.
    pub format: Stage2,
    /// One tree per cell slot (index = cell id).
    pub trees: [Option<PageTable<Stage2>>; MAX_CELLS],
    /// Frames the pool has.
    pub frame_count: usize,
}

static TABLES: Once<Mutex<Tables>> = Once::new();

/// Installs the tables (the root cell's tree in slot 0).
pub fn install_tables(tables: Tables) {
    TABLES.call_once(|| Mutex::new(tables));
}

/// Frames of the table pool: (in use, total).
pub fn frame_usage() -> (usize, usize) {
    TABLES.get().map_or((0, 0), |t| {
        let t = t.lock();
        (t.frames.in_use(), t.frame_count)
    })
}

/// Translation-table pages of cell `cell`'s stage-2 tree (0 when the slot is empty).
pub fn table_pages(cell: u16) -> usize {
    TABLES.get().map_or(0, |t| {
        let t = t.lock();
        // SAFETY: EL2 is identity mapped and the pool's frames are mapped readable.
        let memory = unsafe { LinearMemory::new(0) };
        t.trees[usize::from(cell)]
            .as_ref()
            .map_or(0, |tree| tree.stats(&memory).frames)
    })
}

/// What every CPU needs to know about a cell, readable from trap handlers.
pub struct Runtime {
    /// Hypervisor CPUs of the cell.
    pub cpus: AtomicU64,
    /// VTTBR_EL2 value (0: slot free).
    pub vttbr: AtomicU64,
    /// [`CellState`] value.
    pub state: AtomicU32,
    /// Entry point of the cell's CPUs at start.
    pub reset: AtomicU64,
    /// Physical address of the communication page (0: none).
    pub comm: AtomicU64,
    /// Name, for reports.
    pub name: Mutex<heapless::String<32>>,
    /// Guest time (counter ticks) of the first shutdown request, 0: none pending.
    pub shutdown_since: AtomicU64,
    /// The cell's console UART: kind (`cellvisor_abi::comm::UART_*`) and address.
    pub console: (AtomicU32, AtomicU64),
}

impl Runtime {
    const fn new() -> Self {
        Self {
            cpus: AtomicU64::new(0),
            vttbr: AtomicU64::new(0),
            state: AtomicU32::new(0),
            reset: AtomicU64::new(0),
            comm: AtomicU64::new(0),
            name: Mutex::new(heapless::String::new()),
            shutdown_since: AtomicU64::new(0),
            console: (AtomicU32::new(0), AtomicU64::new(0)),
        }
    }
}

/// Per-cell run-time state, by cell id.
pub static RUNTIME: [Runtime; MAX_CELLS] = [const { Runtime::new() }; MAX_CELLS];

/// The cell each CPU belongs to.
static OWNER: [AtomicU16; MAX_CPUS] = [const { AtomicU16::new(0) }; MAX_CPUS];
/// A stop request for the CPU (it parks at its next trap, see [`gic::EVENT_SGI`]).
static STOP: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// The CPU waits in [`park`] (runs no vCPU).
static PARKED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Bit n: CPU n waits for a CPU to park ([`stop_cpu`]); a CPU that parks wakes them all.
static PARK_WATCHERS: AtomicU64 = AtomicU64::new(0);
/// The CPU should enter its (non-root) cell at the cell's reset address.
static START: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// The cell `cpu` belongs to.
pub fn owner(cpu: usize) -> u16 {
    OWNER.get(cpu).map_or(0, |o| o.load(Ordering::Acquire))
}

/// Gives `cpu` to `cell` (the CPU must be parked).
pub fn set_owner(cpu: usize, cell: u16) {
    if let Some(o) = OWNER.get(cpu) {
        o.store(cell, Ordering::Release);
    }
}

/// The requester for GIC emulation: the cell of `cpu` and its CPUs.
pub fn requester(cpu: usize) -> gic::Requester {
    let cell = owner(cpu);
    gic::Requester {
        cell,
        cpus: RUNTIME[usize::from(cell)].cpus.load(Ordering::Acquire),
        cpu,
    }
}

/// The name of `cpu`'s cell, for reports.
pub fn name_of(cpu: usize) -> heapless::String<32> {
    RUNTIME[usize::from(owner(cpu))].name.lock().clone()
}

/// Whether `cpu` waits in the park loop.
pub fn is_parked(cpu: usize) -> bool {
    PARKED.get(cpu).is_some_and(|p| p.load(Ordering::Acquire))
}

/// Takes the stop request of `cpu`, if any.
pub fn take_stop(cpu: usize) -> bool {
    STOP.get(cpu)
        .is_some_and(|s| s.swap(false, Ordering::AcqRel))
}

/// Whether a stop request for `cpu` waits to be taken.
pub fn stop_requested(cpu: usize) -> bool {
    STOP.get(cpu).is_some_and(|s| s.load(Ordering::Acquire))
}

/// Asks `cpu` to stop running its vCPU and waits, asleep, until it is parked (it wakes this
/// CPU then) or about 100 ms of guest time passed. Returns whether it is parked.
pub fn stop_cpu(cpu: usize) -> bool {
    if is_parked(cpu) {
        return true;
    }
    let me = 1u64 << super::cpu_index();
    PARK_WATCHERS.fetch_or(me, Ordering::SeqCst);
    STOP[cpu].store(true, Ordering::SeqCst);
    core::sync::atomic::fence(Ordering::SeqCst);
    wait::kick(cpu);
    // `park` marks the CPU parked, then looks at the watchers (both SeqCst): it wakes this
    // CPU, or this CPU sees it parked before sleeping.
    let parked = wait::until(Some(wait::deadline_in(100)), || is_parked(cpu));
    PARK_WATCHERS.fetch_and(!me, Ordering::SeqCst);
    parked
}

/// Marks `cpu` to enter its cell at the next chance and wakes it.
pub fn start_cpu(cpu: usize) {
    START[cpu].store(true, Ordering::Release);
    wait::kick(cpu);
}

fn now() -> u64 {
    use aarch64_cpu::registers::{Readable, CNTPCT_EL0};
    CNTPCT_EL0.get()
}

/// Counter frequency.
pub fn frequency() -> u64 {
    use aarch64_cpu::registers::{Readable, CNTFRQ_EL0};
    CNTFRQ_EL0.get().max(1)
}

/// Guest time now, in counter ticks.
pub fn ticks() -> u64 {
    now()
}

/// Guest time now, in milliseconds (without overflow for any uptime).
pub fn millis() -> u64 {
    let (ticks, frequency) = (now(), frequency());
    ticks / frequency * 1000 + ticks % frequency * 1000 / frequency
}

/// The park loop: `cpu` runs no vCPU and sleeps until its cell gives it one: the root cell
/// through PSCI CPU_ON, another cell through its start (both kick it). Rewrites `frame` for
/// the entry and returns; the caller's `eret` enters the cell.
///
/// The vCPU it ran is gone, as after a power-off: its virtual interrupts are dropped and its
/// EL1 timers switched off (they would keep their interrupt lines asserted); the next vCPU
/// finds the CPU's private interrupts reset ([`gic::reset_private`]).
pub fn park(cpu: usize, frame: &mut TrapFrame) {
    gic::reset_cpu_interface(cpu);
    stop_el1_timers();
    PARKED[cpu].store(true, Ordering::SeqCst);
    let mut watchers = PARK_WATCHERS.load(Ordering::SeqCst);
    while watchers != 0 {
        wait::kick(watchers.trailing_zeros() as usize);
        watchers &= watchers - 1;
    }
    let mut entry = None;
    wait::until(None, || {
        entry = take_entry(cpu);
        entry.is_some()
    });
    // Without a deadline `until` returns only once `take_entry` gave an entry.
    let (cell, pc, x0) = entry.unwrap_or_default();
    STOP[cpu].store(false, Ordering::Release);
    // The new vCPU starts as after reset: no private interrupt of the previous one (maybe
    // of another cell) enabled, pending or active.
    gic::reset_private(cpu);
    super::cell::prepare_cpu_for(cell);
    // Nor any of its EL1, FP/SIMD or key registers (with FP/SIMD untrapped by the line above).
    super::scrub::el1_state();
    enter_frame(frame, pc, x0);
    PARKED[cpu].store(false, Ordering::Release);
}

/// What a parked `cpu` is to enter, if anything: its cell, the entry point and x0.
fn take_entry(cpu: usize) -> Option<(u16, u64, u64)> {
    let cell = owner(cpu);
    if cell == 0 {
        let (entry, context) = super::cell::power(cpu).take_start()?;
        return Some((0, entry, context));
    }
    if !START[cpu].swap(false, Ordering::AcqRel) {
        return None;
    }
    let runtime = &RUNTIME[usize::from(cell)];
    (runtime.state.load(Ordering::Acquire) == CellState::Running as u32)
        .then(|| (cell, runtime.reset.load(Ordering::Acquire), 0))
}

/// Switches off the EL1 physical and virtual timers of the vCPU that left this CPU.
fn stop_el1_timers() {
    use aarch64_cpu::registers::{Writeable, CNTP_CTL_EL0, CNTV_CTL_EL0};
    CNTV_CTL_EL0.set(0);
    CNTP_CTL_EL0.set(0);
}

/// Rewrites `frame` so that its `eret` enters a vCPU at `entry` with x0 = `x0`, EL1h with
/// D, A, I, F masked, and EL1's MMU and caches off (the state of a CPU after reset).
pub fn enter_frame(frame: &mut TrapFrame, entry: u64, x0: u64) {
    use aarch64_cpu::registers::{Writeable, SCTLR_EL1};
    use tock_registers::fields::FieldValue;
    // SCTLR_EL1: the RES1 bits of the Armv8.0 layout set, everything else clear (MMU, caches
    // and alignment checks off). Later versions name those bits (Arm ARM D23 "SCTLR_EL1"):
    // LSMAOE (29), nTLSMD (28), SPAN (23), EIS (22), TSCXT (20), EOS (11), 1 being the Armv8.0
    // behaviour for each; aarch64-cpu 11 names none of them.
    const RES1: u64 = 1 << 29 | 1 << 28 | 1 << 23 | 1 << 22 | 1 << 20 | 1 << 11;
    const RES1_BITS: FieldValue<u64, SCTLR_EL1::Register> =
        FieldValue::<u64, _>::new(RES1, 0, RES1);
    SCTLR_EL1.write(
        RES1_BITS
            + SCTLR_EL1::M::Disable
            + SCTLR_EL1::A::Disable
            + SCTLR_EL1::C::NonCacheable
            + SCTLR_EL1::I::NonCacheable,
    );
    frame.x = [0; 31];
    frame.x[0] = x0;
    frame.sp = 0;
    frame.elr = entry;
    frame.spsr = crate::trap::SPSR_EL1H_MASKED;
}

/// Stage-2 TLB maintenance for the live tree of the root cell, run on a root-cell CPU (whose
/// VTTBR_EL2 holds the root cell's VMID): all of the VMID's entries, inner shareable.
struct LiveRoot;

impl TlbInvalidate<GuestPhysAddr> for LiveRoot {
    fn invalidate(&mut self, _start: GuestPhysAddr, _size: u64, _stale: Stale) {
        // SAFETY: TLB maintenance drops cached translations only.
        unsafe {
            core::arch::asm!(
                "dsb ishst",
                "tlbi vmalls12e1is",
                "dsb ish",
                "isb",
                options(nostack)
            )
        };
    }
}

/// The stage-2 attributes of a configuration region's flags.
pub fn attributes(flags: MemoryFlags) -> Attributes {
    let mut access = Access::empty();
    for (flag, bit) in [
        (MemoryFlags::READ, Access::READ),
        (MemoryFlags::WRITE, Access::WRITE),
        (MemoryFlags::EXECUTE, Access::EXECUTE),
    ] {
        if flags.contains(flag) {
            access |= bit;
        }
    }
    let kind = if flags.contains(MemoryFlags::IO) {
        MemoryType::Device
    } else {
        MemoryType::Normal(Cacheability::WriteBack)
    };
    Attributes::new(access, kind)
}

/// Why the machine refused a step.
#[derive(Clone, Copy, Debug)]
pub enum MachineError {
    /// Stage-2 tables.
    Paging(cellvisor_paging::Error),
    /// No free cell slot or table frames.
    NoMemory,
    /// The GIC refused an interrupt move.
    Gic(&'static str),
}

impl core::fmt::Display for MachineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Paging(e) => write!(f, "stage 2: {e}"),
            Self::NoMemory => f.write_str("out of hypervisor memory"),
            Self::Gic(e) => write!(f, "GIC: {e}"),
        }
    }
}

/// The machine side of cell bookkeeping: stage-2 tables, GIC ownership, CPUs.
pub struct Machine;

fn with_tables<T>(f: impl FnOnce(&mut Tables) -> T) -> T {
    let mut tables = TABLES.get().expect("tables before the root cell").lock();
    f(&mut tables)
}

fn tree_op(
    cell: u16,
    f: impl FnOnce(
        &mut PageTable<Stage2>,
        &mut TableMemory<&mut FramePool<TABLE_FRAMES>, LinearMemory>,
    ) -> Result<(), cellvisor_paging::Error>,
) -> Result<(), MachineError> {
    with_tables(|tables| {
        let mut memory = TableMemory {
            frames: &mut tables.frames,
            // SAFETY: EL2 is identity mapped and the pool's frames are mapped read-write.
            memory: unsafe { LinearMemory::new(0) },
        };
        let tree = tables.trees[usize::from(cell)]
            .as_mut()
            .ok_or(MachineError::NoMemory)?;
        f(tree, &mut memory).map_err(MachineError::Paging)
    })
}

impl cellvisor_cell::Partition for Machine {
    type Error = MachineError;

    fn unmap_from_root(
        &mut self,
        root_virt: u64,
        _phys: u64,
        size: u64,
    ) -> Result<(), Self::Error> {
        tree_op(0, |tree, memory| {
            tree.unmap(memory, &mut LiveRoot, GuestPhysAddr::new(root_virt), size)
        })
    }

    fn map_into_root(
        &mut self,
        root_virt: u64,
        phys: u64,
        size: u64,
        flags: MemoryFlags,
    ) -> Result<(), Self::Error> {
        tree_op(0, |tree, memory| {
            tree.map(
                memory,
                &mut LiveRoot,
                Mapping {
                    input: GuestPhysAddr::new(root_virt),
                    output: PhysAddr::new(phys),
                    size,
                    attributes: attributes(flags),
                },
                MapMode::New,
            )
        })
    }

    fn map_into_cell(
        &mut self,
        cell: cellvisor_cell::CellId,
        region: &cellvisor_cell::Region,
    ) -> Result<(), Self::Error> {
        let id = cell.0 as u16;
        if region.flags.contains(MemoryFlags::COMM_REGION) {
            return map_comm_region(id, region.virt);
        }
        tree_op(id, |tree, memory| {
            tree.map(
                memory,
                &mut NotLive,
                Mapping {
                    input: GuestPhysAddr::new(region.virt),
                    output: PhysAddr::new(region.phys),
                    size: region.size,
                    attributes: attributes(region.flags),
                },
                MapMode::New,
            )
        })
    }

    fn unmap_from_cell(
        &mut self,
        cell: cellvisor_cell::CellId,
        region: &cellvisor_cell::Region,
    ) -> Result<(), Self::Error> {
        let id = cell.0 as u16;
        tree_op(id, |tree, memory| {
            tree.unmap(
                memory,
                &mut NotLive,
                GuestPhysAddr::new(region.virt),
                region.size,
            )
        })?;
        if region.flags.contains(MemoryFlags::LOADABLE)
            && !region
                .flags
                .intersects(MemoryFlags::IO | MemoryFlags::ROOTSHARED | MemoryFlags::COMM_REGION)
        {
            // What the cell left in its RAM goes neither to the root cell nor, through it,
            // to the next cell that gets this memory.
            // SAFETY: a loadable region is RAM inside the root cell's configuration, mapped
            // at EL2 (the load command writes it the same way); no cell maps it any more
            // (just unmapped from this one, not yet mapped back into the root cell) and no
            // Rust reference points into it.
            unsafe { core::ptr::write_bytes(region.phys as *mut u8, 0, region.size as usize) };
            // Cells may read it with their MMU off (non-cacheable): push the zeros to memory.
            cache::clean_invalidate(region.phys as usize, region.size as usize);
        }
        Ok(())
    }

    fn move_irq(
        &mut self,
        irq: u32,
        from: cellvisor_cell::CellId,
        to: cellvisor_cell::CellId,
    ) -> Result<(), Self::Error> {
        gic::transfer(from.0 as u16, to.0 as u16, &[irq]).map_err(MachineError::Gic)
    }

    fn move_cpu(
        &mut self,
        cpu: u32,
        _from: cellvisor_cell::CellId,
        to: cellvisor_cell::CellId,
    ) -> Result<(), Self::Error> {
        let cpu = cpu as usize;
        let to = to.0 as u16;
        set_owner(cpu, to);
        for (id, runtime) in RUNTIME.iter().enumerate() {
            if id == usize::from(to) {
                runtime.cpus.fetch_or(1 << cpu, Ordering::AcqRel);
            } else {
                runtime.cpus.fetch_and(!(1 << cpu), Ordering::AcqRel);
            }
        }
        super::cell::reset_counters(cpu);
        Ok(())
    }

    fn create_tables(&mut self, cell: cellvisor_cell::CellId) -> Result<(), Self::Error> {
        let id = usize::from(cell.0 as u16);
        with_tables(|tables| {
            let mut memory = TableMemory {
                frames: &mut tables.frames,
                // SAFETY: as in `tree_op`.
                memory: unsafe { LinearMemory::new(0) },
            };
            let tree = PageTable::new(tables.format, &mut memory).map_err(MachineError::Paging)?;
            let slot = tables.trees.get_mut(id).ok_or(MachineError::NoMemory)?;
            *slot = Some(tree);
            Ok(())
        })?;
        // GICv2: the cell's CPU interface is the virtual one, at the GICC address.
        if let Some((gicc, gicv, size)) = super::cell::gicv() {
            tree_op(id as u16, |tree, memory| {
                tree.map(
                    memory,
                    &mut NotLive,
                    Mapping {
                        input: GuestPhysAddr::new(gicc),
                        output: PhysAddr::new(gicv),
                        size,
                        attributes: Attributes::new(Access::RW, MemoryType::Device),
                    },
                    MapMode::New,
                )
            })?;
        }
        let root = with_tables(|tables| tables.trees[id].as_ref().map(|t| t.root()));
        let vttbr = match root {
            Some(root) => root.as_u64() | (id as u64 + 1) << 48,
            None => return Err(MachineError::NoMemory),
        };
        RUNTIME[id].vttbr.store(vttbr, Ordering::Release);
        Ok(())
    }

    fn destroy_tables(&mut self, cell: cellvisor_cell::CellId) {
        let id = usize::from(cell.0 as u16);
        let comm = RUNTIME[id].comm.swap(0, Ordering::AcqRel);
        with_tables(|tables| {
            let mut memory = TableMemory {
                frames: &mut tables.frames,
                // SAFETY: as in `tree_op`.
                memory: unsafe { LinearMemory::new(0) },
            };
            if let Some(tree) = tables.trees.get_mut(id).and_then(Option::take) {
                tree.destroy(&mut memory);
            }
            if comm != 0 {
                memory.frames.deallocate_frames(PhysAddr::new(comm), 1);
            }
        });
        RUNTIME[id].vttbr.store(0, Ordering::Release);
        // The VMID is reused by the next cell in this slot: drop every EL1&0 translation.
        // SAFETY: TLB maintenance drops cached translations only.
        unsafe {
            core::arch::asm!(
                "dsb ishst",
                "tlbi alle1is",
                "dsb ish",
                "isb",
                options(nostack)
            )
        };
    }
}

/// Backs the cell's communication region with a hypervisor frame.
fn map_comm_region(cell: u16, virt: u64) -> Result<(), MachineError> {
    let frame =
        with_tables(|tables| tables.frames.allocate_frames(1)).ok_or(MachineError::NoMemory)?;
    // SAFETY: the frame comes from the pool (hypervisor memory, mapped RW at EL2) and is not
    // used by anything else.
    unsafe { core::ptr::write_bytes(frame.as_u64() as *mut u8, 0, 4096) };
    RUNTIME[usize::from(cell)]
        .comm
        .store(frame.as_u64(), Ordering::Release);
    tree_op(cell, |tree, memory| {
        tree.map(
            memory,
            &mut NotLive,
            Mapping {
                input: GuestPhysAddr::new(virt),
                output: frame,
                size: 4096,
                attributes: Attributes::RAM_RW,
            },
            MapMode::New,
        )
    })
}

/// Writes a fresh communication region for `cell` (before it starts).
pub fn init_comm_region(cell: u16, platform: Platform) {
    let comm = RUNTIME[usize::from(cell)].comm.load(Ordering::Acquire);
    if comm == 0 {
        return;
    }
    let mut region = CommRegion::new(platform);
    region.cell_state = (CellState::Running as u32).into();
    let bytes = region.as_bytes();
    // SAFETY: the communication frame is hypervisor memory mapped at EL2; the cell does not
    // run yet.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), comm as *mut u8, bytes.len());
    }
    cache::clean_invalidate(comm as usize, 4096);
}

/// Reads a 32-bit field of `cell`'s communication region.
pub fn comm_read(cell: u16, offset: usize) -> Option<u32> {
    let comm = RUNTIME[usize::from(cell)].comm.load(Ordering::Acquire);
    // SAFETY: an aligned field inside the communication frame (mapped at EL2).
    (comm != 0).then(|| unsafe { ((comm as usize + offset) as *const u32).read_volatile() })
}

/// Writes a 32-bit field of `cell`'s communication region.
pub fn comm_write(cell: u16, offset: usize, value: u32) {
    let comm = RUNTIME[usize::from(cell)].comm.load(Ordering::Acquire);
    if comm != 0 {
        // SAFETY: an aligned field inside the communication frame (mapped at EL2).
        unsafe { ((comm as usize + offset) as *mut u32).write_volatile(value) };
        aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
    }
}
