//! The parts that run on the CPU: entry, exception vectors, MMU, PSCI, timers. Only built
//! for AArch64 targets; everything above this module is plain logic tested on the host.

mod arm;
mod boot;
mod cache;
mod cell;
mod cells;
mod console;
mod entry;
mod exception;
mod frame;
mod gic;
mod guest;
mod mmu;
mod pmu;
mod scrub;
mod sysreg;
mod timer;
mod wait;

use crate::board::{device_tree_size, Board, CpuList, MPIDR_AFFINITY_MASK};
use crate::memmap::{ImageLayout, StackArea};
use aarch64_cpu::registers::{Readable, MPIDR_EL1, TPIDR_EL2};
use cellvisor_paging::{PhysAddr, PAGE_SIZE};
use core::sync::atomic::{AtomicUsize, Ordering};

pub use console::{print, report};

/// The architecture: AArch64 at EL2, the GIC, identity-mapped physical memory. Its
/// implementations of `cellvisor-core`'s traits are in `arm.rs`.
#[derive(Debug)]
pub struct Aarch64;

/// The hypervisor: all architecture-neutral state, in `.bss` until boot.
pub static HV: cellvisor_core::Hypervisor<Aarch64> = cellvisor_core::Hypervisor::new(Aarch64);

unsafe extern "Rust" {
    /// The board description, defined by the board crate with [`crate::board!`].
    safe static CELLVISOR_BOARD: Board;
}

unsafe extern "C" {
    /// Its address is the number of per-CPU stacks the board reserved.
    static __max_cpus: u8;
    /// Their addresses are the stack slot sizes, guard page included.
    static __boot_stack_slot: u8;
    static __stack_slot: u8;
    static __exception_stack_slot: u8;
    static __exception_stacks_start: u8;
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __stacks_start: u8;
    static __image_end: u8;
}

/// What the primary CPU prepares for the secondaries before starting them. Cleaned to the
/// point of coherency because secondaries read it with their caches still off.
#[repr(C, align(64))]
struct BootParams {
    mmu: mmu::MmuConfig,
}

static mut BOOT_PARAMS: BootParams = BootParams {
    mmu: mmu::MmuConfig {
        mair: 0,
        tcr: 0,
        ttbr0: 0,
    },
};

/// CPUs running at EL2 on the hypervisor's tables.
static ONLINE: AtomicUsize = AtomicUsize::new(0);

/// CPUs running at EL2.
fn online_cpus() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// The index of the running CPU (0 for the boot CPU).
pub fn cpu_index() -> usize {
    TPIDR_EL2.get() as usize
}

/// Stops this CPU for good: interrupts masked (in PSTATE, and at the GIC so that a pending
/// one does not end every WFI), sleeping forever.
pub fn park() -> ! {
    // SAFETY: masking interrupts has no memory effects.
    unsafe { core::arch::asm!("msr daifset, #0xf", options(nomem, nostack)) };
    gic::mask_all(cpu_index());
    idle()
}

/// Waits for an interrupt, forever: the idle loop of a CPU with nothing to do.
fn idle() -> ! {
    loop {
        aarch64_cpu::asm::wfi();
    }
}

fn layout() -> ImageLayout {
    // The linker script defines these symbols; only their addresses are used, no read.
    let address = |symbol: *const u8| PhysAddr::new(symbol as u64);
    let count = &raw const __max_cpus as u64;
    let layout = ImageLayout {
        start: address(&raw const __image_start),
        text_end: address(&raw const __text_end),
        rodata_end: address(&raw const __rodata_end),
        stacks_start: address(&raw const __stacks_start),
        stacks: [
            StackArea {
                count: 1,
                slot: &raw const __boot_stack_slot as u64,
            },
            StackArea {
                count,
                slot: &raw const __stack_slot as u64,
            },
            StackArea {
                count,
                slot: &raw const __exception_stack_slot as u64,
            },
        ],
    };
    debug_assert_eq!(layout.end(), address(&raw const __image_end));
    layout
}

/// The device tree the boot loader passed in x0, or the one at the board's fallback
/// address, if either holds a valid header. Read with the MMU off.
fn device_tree(board: &Board, x0: u64) -> Option<&'static [u8]> {
    let candidates = [Some(x0), board.dtb_fallback.map(PhysAddr::as_u64)];
    candidates.into_iter().flatten().find_map(|address| {
        // Only addresses inside the board's RAM that cannot be our own image are probed:
        // reading anywhere else could hit a hole in the physical map.
        let (ram, ram_size) = board.ram;
        let image = layout();
        if address % 8 != 0
            || address < ram.as_u64()
            || address + 8 > ram.as_u64() + ram_size
            || (image.start.as_u64()..image.end().as_u64()).contains(&address)
        {
            return None;
        }
        // SAFETY: the address is 8-byte aligned and inside RAM the board guarantees to exist.
        let header = unsafe { (address as *const [u8; 8]).read_volatile() };
        let size = device_tree_size(&header)?;
        if address + size as u64 > ram.as_u64() + ram_size {
            return None;
        }
        // SAFETY: the blob lies inside RAM and nothing writes to it while we run.
        Some(unsafe { core::slice::from_raw_parts(address as *const u8, size) })
    })
}

/// Rust entry of the boot CPU, from `_start`, at EL2 with the MMU off.
#[unsafe(no_mangle)]
extern "C" fn cellvisor_primary_entry(x0: u64) -> ! {
    let board = &CELLVISOR_BOARD;
    let (uart_kind, uart_base) = board.uart;
    console::set_early(uart_kind, uart_base);

    // The CPU list, boot CPU first: it owns index 0 and stack slot 0.
    let mut cpus = CpuList::for_board(board.cpus, device_tree(board, x0));
    let me = MPIDR_EL1.get() & MPIDR_AFFINITY_MASK;
    cpus.move_to_front(me);

    // The system configuration: copied into the image while the MMU is off, parsed once
    // it is on (parsing needs normal memory).
    let system_config = boot::copy_config(board.boot.config);
    let dtb = device_tree(board, x0).map(|tree| (tree.as_ptr() as u64, tree.len()));

    let mut devices = heapless::Vec::<(PhysAddr, u64), 4>::new();
    let _ = devices.push((uart_base, PAGE_SIZE));
    let config = match mmu::build(layout(), &devices) {
        Ok(config) => config,
        Err(error) => {
            report(format_args!(
                "cellvisor: FATAL: cannot build the EL2 map: {error}\n"
            ));
            park()
        }
    };
    mmu::enable(&config);
    console::init(uart_kind, uart_base);

    // SAFETY: secondaries are not running yet; nothing else accesses BOOT_PARAMS.
    unsafe {
        let params = &raw mut BOOT_PARAMS;
        (*params).mmu = config;
        cache::clean_invalidate(params as usize, core::mem::size_of::<BootParams>());
    }
    ONLINE.store(1, Ordering::Release);

    // Only the address of the linker symbol is used: no read, so no unsafe.
    let stacks = &raw const __max_cpus as usize;
    if cpus.mpidrs().len() > stacks {
        log::error!(
            "{} CPUs found but the image has stacks for {stacks}: the others stay off",
            cpus.mpidrs().len()
        );
    }
    // With a root cell to run: parse the configuration, map what it needs and set up the GIC
    // before any other CPU runs on the tables. From then on a CPU can sleep, and a waiter
    // for a lock does.
    let system_config = system_config.and_then(|bytes| boot::prepare(board, bytes, cpus.mpidrs()));
    cellvisor_sync::install(cellvisor_sync::Waiting {
        cpu: cpu_index,
        sleep: wait::sleep_until_ready,
        wake: wait::kick,
    });
    let mut started = 1;
    for (index, &mpidr) in cpus.mpidrs().iter().enumerate().take(stacks).skip(1) {
        let entry = entry::cellvisor_secondary_entry as *const () as u64;
        match smccc::psci::cpu_on::<smccc::Smc>(mpidr, entry, index as u64) {
            Ok(()) => started += 1,
            Err(error) => {
                log::warn!("CPU {index} (MPIDR {mpidr:#x}): PSCI CPU_ON failed: {error:?}")
            }
        }
    }
    let total = cpus.mpidrs().len();
    let online = wait_for_cpus(started, 2_000);
    print(format_args!(
        "cellvisor {} on {}: {online}/{total} CPUs at EL2\n",
        board.version, board.name
    ));
    if online < total {
        log::error!("{} CPU(s) did not reach EL2", total - online);
    }
    if cfg!(feature = "fault-injection") {
        inject_fault();
    }
    match system_config {
        Some(prepared) => boot::root_cell(board, prepared, cpus.mpidrs(), dtb),
        None => {
            log::info!(
                "no system configuration at {:#x}: no root cell to run",
                board.boot.config.as_u64()
            );
            idle()
        }
    }
}

/// Waits until `expected` CPUs are online or `timeout_ms` passed; returns how many are. Each
/// secondary kicks this (the boot) CPU when it is online; without a GIC (no system
/// configuration) the wait spins.
fn wait_for_cpus(expected: usize, timeout_ms: u64) -> usize {
    wait::until(Some(wait::deadline_in(timeout_ms)), || {
        ONLINE.load(Ordering::Acquire) >= expected
    });
    ONLINE.load(Ordering::Acquire)
}

/// Rust entry of a secondary CPU, at EL2 with the MMU off, on its own stacks.
#[unsafe(no_mangle)]
extern "C" fn cellvisor_secondary_entry_rust(index: u64) -> ! {
    // SAFETY: the primary wrote BOOT_PARAMS and cleaned it to the point of coherency before
    // starting us, and does not write it again.
    let config = unsafe { (&raw const BOOT_PARAMS.mmu).read_volatile() };
    mmu::enable(&config);
    ONLINE.fetch_add(1, Ordering::SeqCst);
    wait::kick(0);
    log::debug!("CPU {index} at EL2");
    boot::secondary(index as usize)
}

/// The top of CPU `cpu`'s exception stack (SP_EL2 when no exception is in progress).
fn exception_stack_top(cpu: usize) -> u64 {
    // Only the addresses of the linker symbols are used.
    let start = &raw const __exception_stacks_start as u64;
    let slot = &raw const __exception_stack_slot as u64;
    start + slot * (cpu as u64 + 1)
}

/// Debug builds with the `fault-injection` feature: read an address the EL2 map does not
/// cover, to show the fault report.
fn inject_fault() {
    let address = 0xdead_0000_usize;
    log::warn!("fault injection: reading unmapped address {address:#x}");
    // SAFETY: deliberately unsound in one way only: the access faults, and the fault
    // handler never returns here.
    let value = unsafe { (address as *const u64).read_volatile() };
    log::error!("fault injection: read {value:#x} without a fault");
}
