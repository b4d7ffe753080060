//! # cellvisor-core
//!
//! The cellvisor hypervisor without an architecture: everything that is the same on Arm and
//! x86, written once, and tested on the host.
//!
//! - **Management** ([`Hypervisor::mgmt_access`]): the root cell's control page and data
//!   window (`cellvisor-abi` `mgmt`) and the commands behind them: create, load, start, shut
//!   down (the communication-region vote), destroy, list, statistics, console.
//! - **The cell runtime**: which cell each CPU runs, stop requests, the park loop
//!   ([`Hypervisor::park`]), starting a cell's CPUs, and the one implementation of
//!   [`cellvisor_cell::Partition`] (second-stage tables from a frame pool, interrupt lines,
//!   CPUs).
//! - **Root-cell bookkeeping and the violation policy** ([`Hypervisor::violation`]): the root
//!   cell gets an abort, any other cell is stopped.
//! - **vCPU power states** ([`VcpuPower`]), **trap counters** ([`TrapCounters`] with
//!   architecture-neutral [`TrapReason`]s), the **console ring** ([`Ring`]) and each cell's
//!   **output budget** ([`budget`]).
//!
//! An architecture implements the small traits of [`arch`] and keeps one
//! `static HV: Hypervisor<MyArch>`; all state lives in that one value, with one [`PerCpu`]
//! struct per CPU. Memory that a cell or root userspace can write (the data window,
//! communication regions, cell RAM) is reached only through [`arch::Memory`]'s volatile
//! copies, never through a Rust reference.
//!
//! With the `fake` feature, `fake::FakeArch` runs the core on the host: threads as CPUs,
//! a sparse fake physical memory. The tests drive the management interface end to end with
//! it.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

#[cfg(any(test, feature = "fake"))]
extern crate std;

/// The README's example, compiled and run as a doctest.
#[cfg(all(doctest, feature = "fake"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod arch;
pub mod budget;
mod counters;
#[cfg(feature = "fake")]
pub mod fake;
mod machine;
mod manage;
mod power;
mod ring;
mod runtime;

pub use arch::Arch;
pub use counters::{
    TrapCost, TrapCounters, TrapReason, MAX_MEASURED_INSTRUCTIONS, OUTLIER_FACTOR, OUTLIER_FLOOR,
};
pub use machine::{attributes, MachineError, RootTables};
pub use manage::Interface;
pub use power::{CpuOnError, PowerState, VcpuPower};
pub use ring::{Ring, RING_SIZE};
pub use runtime::{Entry, PowerOnError, Restart, StartedBy, Verdict};

use budget::OutputBudget;
use cellvisor_cell::{CellId, Registry};
use cellvisor_paging::{FramePool, PageTable};
use cellvisor_sync::Mutex;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use spin::Once;

/// CPUs the hypervisor can run (CPU sets are 64-bit masks).
pub const MAX_CPUS: usize = 64;
/// Cells the hypervisor runs at once, the root cell included.
pub const MAX_CELLS: usize = 8;
/// Frames for second-stage tables and communication regions.
pub const TABLE_FRAMES: usize = 1024;
/// The largest cell configuration the hypervisor copies out of the data window.
pub const MAX_CELL_CONFIG: usize = 64 << 10;

/// What one CPU's hypervisor state is: which cell it runs, requests for it, its vCPU's power
/// state and its trap counters.
#[derive(Debug)]
pub struct PerCpu {
    /// The cell the CPU belongs to.
    owner: AtomicU16,
    /// A stop request: the CPU parks at its next trap.
    stop: AtomicBool,
    /// The CPU waits in [`Hypervisor::park`] (runs no vCPU).
    parked: AtomicBool,
    /// The CPU should enter its (non-root) cell at the cell's reset address.
    start: AtomicBool,
    /// This CPU's console output goes to the UART only, not into the ring (a note over its
    /// cell's share).
    ring_off: AtomicBool,
    /// The power state of the vCPU on this CPU.
    pub power: VcpuPower,
    /// Traps of this CPU, by reason.
    pub counters: TrapCounters,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            owner: AtomicU16::new(0),
            stop: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            start: AtomicBool::new(false),
            ring_off: AtomicBool::new(false),
            power: VcpuPower::new(),
            counters: TrapCounters::new(),
        }
    }
}

/// What every CPU needs to know about a cell, readable from trap handlers.
#[derive(Debug)]
pub struct CellRuntime {
    /// Hypervisor CPUs of the cell.
    cpus: AtomicU64,
    /// Physical address of the root of its second-stage tables (0: slot free).
    tables: AtomicU64,
    /// [`cellvisor_abi::CellState`] value.
    state: AtomicU32,
    /// Entry point of the cell's CPUs at start.
    reset: AtomicU64,
    /// Physical address of the communication page (0: none).
    comm: AtomicU64,
    /// Name, for reports.
    name: Mutex<heapless::String<32>>,
    /// Counter value of the first shutdown request, 0: none pending.
    shutdown_since: AtomicU64,
    /// The cell's console UART: kind (`cellvisor_abi::comm::UART_*`) and address.
    console: (AtomicU32, AtomicU64),
    /// Its CPUs are being stopped (a shutdown, a destroy, a violation): none of them starts
    /// again, whatever the cell asks.
    stopping: AtomicBool,
    /// Its start started its first CPU only; it powers the others on itself.
    boot_cpu_only: AtomicBool,
    /// It runs a stock OS: its writes to foreign interrupts are dropped, not violations.
    stock_os: AtomicBool,
    /// Whether the cell's reset shuts it down ([`cellvisor_abi::start::NO_RESTART_IN_PLACE`]).
    no_restart_in_place: AtomicBool,
    /// The first argument register of the CPUs its start starts.
    start_arg: AtomicU64,
}

impl CellRuntime {
    const fn new() -> Self {
        Self {
            cpus: AtomicU64::new(0),
            tables: AtomicU64::new(0),
            state: AtomicU32::new(0),
            reset: AtomicU64::new(0),
            comm: AtomicU64::new(0),
            name: Mutex::new(heapless::String::new()),
            shutdown_since: AtomicU64::new(0),
            console: (AtomicU32::new(0), AtomicU64::new(0)),
            stopping: AtomicBool::new(false),
            boot_cpu_only: AtomicBool::new(false),
            stock_os: AtomicBool::new(false),
            no_restart_in_place: AtomicBool::new(false),
            start_arg: AtomicU64::new(0),
        }
    }

    /// The cell's CPUs.
    pub fn cpus(&self) -> u64 {
        self.cpus.load(Ordering::Acquire)
    }

    /// Physical address of the root of the cell's second-stage tables (0: no cell).
    pub fn tables(&self) -> u64 {
        self.tables.load(Ordering::Acquire)
    }

    /// The cell's state (`cellvisor_abi::CellState` value; 0: no cell).
    pub fn state(&self) -> u32 {
        self.state.load(Ordering::Acquire)
    }

    /// The cell's name.
    pub fn name(&self) -> heapless::String<32> {
        self.name.lock().clone()
    }

    /// Whether the cell runs and is not being stopped: its CPUs may start.
    fn may_start(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst)
            && self.state() == cellvisor_abi::CellState::Running as u32
    }

    /// Whether the cell was started as a stock OS ([`cellvisor_abi::start::STOCK_OS`]):
    /// its writes to interrupts not its own are dropped instead of stopping it.
    pub fn stock_os(&self) -> bool {
        self.stock_os.load(Ordering::Acquire)
    }
}

/// The second-stage tables of all cells and the frames they come from.
pub(crate) struct Tables<F: cellvisor_paging::Format> {
    /// Free and used frames.
    frames: FramePool<TABLE_FRAMES>,
    /// The format every cell uses.
    format: F,
    /// One tree per cell slot (index = cell id).
    trees: [Option<PageTable<F>>; MAX_CELLS],
    /// Frames the pool has.
    frame_count: usize,
}

/// The management interface's state: the books and the command registers.
struct Management {
    registry: Registry<MAX_CELLS>,
    args: [u64; 4],
    status: i64,
}

/// The hypervisor: one value holding all architecture-neutral state, over an architecture
/// `A`. An architecture keeps it in a `static`, built with the `const` [`Hypervisor::new`].
pub struct Hypervisor<A: Arch> {
    arch: A,
    cpus: [PerCpu; MAX_CPUS],
    cells: [CellRuntime; MAX_CELLS],
    /// Bit n: CPU n waits for a CPU to park ([`Hypervisor::stop_cpu`]).
    park_watchers: AtomicU64,
    /// Set once by [`Hypervisor::install_root`] (a `Once`, not an `Option`: the whole value
    /// stays all-zero at build time and lives in `.bss`).
    tables: Once<Mutex<Tables<A::Format>>>,
    management: Once<Mutex<Management>>,
    interface: Once<Interface>,
    system: Once<cellvisor_config::SystemConfigView<'static>>,
    /// A copy of a cell configuration from the data window: the root cell cannot change it
    /// while the hypervisor checks and uses it.
    config_copy: Mutex<[u8; MAX_CELL_CONFIG]>,
    ring: Ring,
    budgets: Mutex<[OutputBudget; MAX_CELLS]>,
    /// When the root cell last had the counters printed (milliseconds; 0: never).
    last_counters: AtomicU64,
    /// The root cell's executable RAM, `[start, end)` (for its CPU power-on); `None` when
    /// it has more regions than the list holds.
    root_executable: Once<Option<heapless::Vec<(u64, u64), ROOT_EXECUTABLE>>>,
}

/// Executable RAM regions of the root cell kept for its CPU power-on checks.
const ROOT_EXECUTABLE: usize = 32;

impl<A: Arch> core::fmt::Debug for Hypervisor<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("ring_head", &self.ring.head())
            .finish_non_exhaustive()
    }
}

impl<A: Arch> Hypervisor<A> {
    /// A hypervisor with no root cell yet; [`install_root`](Self::install_root) and
    /// [`init_management`](Self::init_management) make one.
    pub const fn new(arch: A) -> Self {
        Self {
            arch,
            cpus: [const { PerCpu::new() }; MAX_CPUS],
            cells: [const { CellRuntime::new() }; MAX_CELLS],
            park_watchers: AtomicU64::new(0),
            tables: Once::new(),
            management: Once::new(),
            interface: Once::new(),
            system: Once::new(),
            config_copy: Mutex::new([0; MAX_CELL_CONFIG]),
            ring: Ring::new(),
            budgets: Mutex::new([OutputBudget::new(); MAX_CELLS]),
            last_counters: AtomicU64::new(0),
            root_executable: Once::new(),
        }
    }

    /// The architecture.
    pub fn arch(&self) -> &A {
        &self.arch
    }

    /// CPU `cpu`'s state (the last CPU's for an index out of range, so that a bad index
    /// never panics).
    #[inline]
    pub fn cpu(&self, cpu: usize) -> &PerCpu {
        &self.cpus[cpu.min(MAX_CPUS - 1)]
    }

    /// Cell slot `cell`'s run-time state; for an id beyond the slots, an empty one (no CPUs,
    /// no tables, no state), so that a bad id never panics nor reaches another cell.
    pub fn cell(&self, cell: CellId) -> &CellRuntime {
        static NO_CELL: CellRuntime = CellRuntime::new();
        self.cells.get(cell.0 as usize).unwrap_or(&NO_CELL)
    }

    /// The console ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Whether CPU `cpu`'s console output stays out of the ring just now.
    #[inline]
    pub fn ring_off(&self, cpu: usize) -> bool {
        self.cpu(cpu).ring_off.load(Ordering::Relaxed)
    }

    /// Counts a trap of `cpu`.
    #[inline]
    pub fn count(&self, cpu: usize, reason: TrapReason) {
        self.cpu(cpu).counters.count(reason);
    }

    /// Guest time now, in milliseconds (without overflow for any uptime).
    pub fn millis(&self) -> u64 {
        let (ticks, frequency) = (self.arch.now(), self.arch.frequency().max(1));
        ticks / frequency * 1000 + ticks % frequency * 1000 / frequency
    }

    /// A counter value `millis` milliseconds from now.
    pub fn deadline_in(&self, millis: u64) -> u64 {
        let frequency = self.arch.frequency().max(1);
        self.arch
            .now()
            .saturating_add(millis.saturating_mul(frequency) / 1000)
    }

    /// Writes a line into the console ring only, not to the console: routine events (a cell
    /// created, started, shut down, destroyed) that `cellvisor console` shows, without
    /// cutting into the root cell's output on the UART both share.
    pub fn record(&self, args: core::fmt::Arguments<'_>) {
        self.arch.exclusive(&mut || {
            let _ = core::fmt::Write::write_fmt(&mut &self.ring, args);
        });
    }

    /// Prints a note about something cell `cell` did while it goes on, within its output
    /// budget ([`budget`]): over the rate the note is dropped and counted, over the cell's
    /// share of the ring it goes to the console only.
    pub fn note(&self, cpu: usize, cell: CellId, args: core::fmt::Arguments<'_>) {
        let mut line = heapless::String::<320>::new();
        let _ = core::fmt::Write::write_fmt(&mut line, args);
        self.note_with(cpu, cell, line.len(), || {
            self.arch.print(format_args!("{line}"))
        });
    }

    /// Like [`note`](Self::note) for output `write` prints itself, about `len` bytes.
    pub fn note_with(&self, cpu: usize, cell: CellId, len: usize, write: impl FnOnce()) {
        let (now_ms, head) = (self.millis(), self.ring.head());
        let decision = self
            .budgets
            .lock()
            .get_mut(cell.0 as usize)
            .map_or(budget::Decision::Suppress, |b| b.admit(now_ms, head, len));
        let budget::Decision::Print { ring, suppressed } = decision else {
            return;
        };
        let Some(state) = self.cpus.get(cpu) else {
            return;
        };
        state.ring_off.store(!ring, Ordering::Relaxed);
        if suppressed > 0 {
            let name = self.cell(cell).name();
            self.arch.print(format_args!(
                "cellvisor: cell \"{name}\": {suppressed} more notes were suppressed (at most {} at once, then one per {} s)\n",
                budget::BURST,
                budget::REFILL_MS / 1000
            ));
        }
        write();
        state.ring_off.store(false, Ordering::Relaxed);
    }

    /// Rate limit of the root cell's counter dumps: whether one is due now (at most one per
    /// `interval_ms`); claims it if so.
    pub fn counters_due(&self, interval_ms: u64) -> bool {
        let now = self.millis();
        let last = self.last_counters.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= interval_ms;
        due && self
            .last_counters
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Frames of the table pool: (in use, total).
    pub fn frame_usage(&self) -> (usize, usize) {
        self.tables.get().map_or((0, 0), |t| {
            let t = t.lock();
            (t.frames.in_use(), t.frame_count)
        })
    }

    /// Whether cell `cell`'s second-stage tables map `ipa` just now. Answered under the
    /// table lock, so a change in progress is finished first: a CPU of a live cell can fault
    /// in the break-before-make window of a change to its tables (the root cell while a cell
    /// takes memory from it), and a fault at an address this answers `true` for is such a
    /// spurious one, to be retried rather than reported.
    pub fn maps(&self, cell: CellId, ipa: u64) -> bool {
        let memory = self.arch.table_memory();
        self.tables.get().is_some_and(|t| {
            t.lock()
                .trees
                .get(cell.0 as usize)
                .and_then(Option::as_ref)
                .is_some_and(|tree| {
                    tree.translate(&memory, cellvisor_paging::GuestPhysAddr::new(ipa))
                        .is_some()
                })
        })
    }

    /// Where cell `cell`'s address `ipa` is in physical memory, if its tables map it as
    /// readable RAM (not device registers, which a read could change): for reading what a
    /// cell's CPU executes and its page tables, to emulate an access. Under the table lock.
    pub fn ram_address(&self, cell: CellId, ipa: u64) -> Option<u64> {
        let memory = self.arch.table_memory();
        let t = self.tables.get()?.lock();
        let tree = t.trees.get(cell.0 as usize)?.as_ref()?;
        let found = tree.translate(&memory, cellvisor_paging::GuestPhysAddr::new(ipa))?;
        let readable = found
            .attributes
            .access
            .contains(cellvisor_paging::Access::READ);
        let ram = matches!(
            found.attributes.memory,
            cellvisor_paging::MemoryType::Normal(_)
        );
        (readable && ram).then_some(found.output.as_u64())
    }

    /// Translation-table pages of cell `cell`'s tree (0 when the slot is empty).
    pub fn table_pages(&self, cell: CellId) -> usize {
        let memory = self.arch.table_memory();
        self.tables.get().map_or(0, |t| {
            t.lock()
                .trees
                .get(cell.0 as usize)
                .and_then(Option::as_ref)
                .map_or(0, |tree| tree.stats(&memory).frames)
        })
    }
}
