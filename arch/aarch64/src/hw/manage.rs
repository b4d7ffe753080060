//! The management interface of the root cell (`cellvisor-abi` `mgmt`): a trapped control page
//! and a data window, and the cell operations behind its commands.
//!
//! Every command runs under one lock, on the root-cell CPU that wrote the command register,
//! the way Jailhouse serialises its management hypercalls.

use super::cells::{self, Machine, RUNTIME};
use super::console::record;
use super::{cache, cell, gic};
use crate::trap::MmioTrap;
use cellvisor_abi::comm::{self, Platform};
use cellvisor_abi::{mgmt, CellState, Command, CpuStats, Error, HypervisorInfo};
use cellvisor_cell::{CellId, Registry};
use cellvisor_config::CellConfigView;
use cellvisor_sync::Mutex;
use core::fmt::Write as _;
use core::sync::atomic::Ordering;
use spin::Once;
use zerocopy::IntoBytes;

/// Where the interface is, in the root cell's (identity) address space.
#[derive(Clone, Copy, Debug)]
pub struct Interface {
    /// The control page.
    pub control: u64,
    /// The data window.
    pub data: u64,
    /// Its size.
    pub data_size: u64,
    /// Bytes of hypervisor memory.
    pub memory_total: u64,
    /// Bytes of the image.
    pub image: u64,
}

static INTERFACE: Once<Interface> = Once::new();

struct State {
    registry: Registry<{ cells::MAX_CELLS }>,
    args: [u64; 4],
    status: i64,
}

static STATE: Once<Mutex<State>> = Once::new();

/// The system configuration (in the image, read-only after boot), for the checks of a new
/// cell's configuration against it.
static SYSTEM: Once<cellvisor_config::SystemConfigView<'static>> = Once::new();

/// A copy of a cell configuration from the data window: the root cell cannot change it
/// while the hypervisor checks and uses it.
struct ConfigCopy([u8; 64 << 10]);
static CONFIG_COPY: Mutex<ConfigCopy> = Mutex::new(ConfigCopy([0; 64 << 10]));

/// Sets the interface up with the root cell's registry, built in place from the system
/// configuration (the registry is tens of KiB: no copies on the stack).
pub fn init(
    interface: Interface,
    config: &cellvisor_config::SystemConfigView<'static>,
) -> Result<(), cellvisor_cell::RootError> {
    INTERFACE.call_once(|| interface);
    SYSTEM.call_once(|| *config);
    let mut result = Ok(());
    STATE.call_once(|| {
        let registry = Registry::from_system(config).unwrap_or_else(|error| {
            result = Err(error);
            Registry::new("", 0, &[], &[], 32).unwrap_or_else(|_| unreachable_registry())
        });
        Mutex::new(State {
            registry,
            args: [0; 4],
            status: 0,
        })
    });
    result
}

fn unreachable_registry() -> Registry<{ cells::MAX_CELLS }> {
    super::report(format_args!(
        "cellvisor: FATAL: cannot build an empty cell registry\n"
    ));
    super::park()
}

/// Whether `ipa` is the control page.
pub fn contains(ipa: u64) -> bool {
    INTERFACE
        .get()
        .is_some_and(|i| (i.control..i.control + mgmt::PAGE_SIZE).contains(&ipa))
}

/// Emulates one access of the root cell to the control page; returns the value of a load.
pub fn access(cpu: usize, ipa: u64, trap: &MmioTrap, value: u64) -> Option<u64> {
    let interface = INTERFACE.get()?;
    let offset = (ipa - interface.control) as usize;
    let mut state = STATE.get()?.lock();
    if trap.write {
        match offset {
            mgmt::ARG0 | mgmt::ARG1 | mgmt::ARG2 | mgmt::ARG3 => {
                state.args[(offset - mgmt::ARG0) / 8] = value;
            }
            mgmt::COMMAND => {
                let status = run(cpu, &mut state, value as u32);
                state.status = status;
            }
            _ => {}
        }
        None
    } else {
        Some(match offset {
            mgmt::MAGIC => u64::from(mgmt::MAGIC_VALUE),
            mgmt::VERSION => u64::from(mgmt::VERSION_VALUE),
            mgmt::DATA_SIZE => interface.data_size,
            mgmt::ARG0 | mgmt::ARG1 | mgmt::ARG2 | mgmt::ARG3 => {
                state.args[(offset - mgmt::ARG0) / 8]
            }
            mgmt::STATUS => state.status as u64,
            _ => 0,
        })
    }
}

/// A failed command; its message is in the data window already.
struct Failure(Error);

/// Writes the message of a failure to the data window.
fn fail(error: Error, args: core::fmt::Arguments<'_>) -> Failure {
    let mut message = heapless::String::<256>::new();
    let _ = message.write_fmt(args);
    write_message(&message);
    Failure(error)
}

fn run(cpu: usize, state: &mut State, raw: u32) -> i64 {
    let Some(command) = Command::from_raw(raw) else {
        return fail(Error::UnknownCommand, format_args!("unknown command {raw}"))
            .0
            .status();
    };
    sync_states(&mut state.registry);
    match execute(cpu, state, command) {
        Ok(result) => result,
        Err(Failure(error)) => error.status(),
    }
}

fn window() -> (u64, u64) {
    INTERFACE.get().map_or((0, 0), |i| (i.data, i.data_size))
}

fn write_message(message: &str) {
    let (data, size) = window();
    let bytes = message.as_bytes();
    let len = bytes.len().min(size as usize - 1);
    // SAFETY: the data window is hypervisor memory mapped at EL2.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), data as *mut u8, len);
        (data as *mut u8).add(len).write(0);
    }
}

fn write_window(offset: usize, bytes: &[u8]) -> Result<(), Failure> {
    let (data, size) = window();
    if offset + bytes.len() > size as usize {
        return Err(fail(
            Error::InvalidArgument,
            format_args!(
                "the answer needs {} bytes, the data window has {size}",
                offset + bytes.len()
            ),
        ));
    }
    // SAFETY: inside the data window (checked), hypervisor memory mapped at EL2.
    unsafe {
        core::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (data as usize + offset) as *mut u8,
            bytes.len(),
        )
    };
    Ok(())
}

/// The registry's view of states the cells' CPUs changed themselves (failed, shut down).
fn sync_states(registry: &mut Registry<{ cells::MAX_CELLS }>) {
    for id in 1..cells::MAX_CELLS as u32 {
        let runtime = RUNTIME[id as usize].state.load(Ordering::Acquire);
        let Some(actual) = CellState::from_raw(runtime) else {
            continue;
        };
        let id = CellId(id);
        if let Some(cell) = registry.cell(id) {
            if cell.state != actual {
                let _ = registry.set_state(id, actual);
            }
        }
    }
}

fn cell_of(registry: &Registry<{ cells::MAX_CELLS }>, raw: u64) -> Result<CellId, Failure> {
    let id = CellId(u32::try_from(raw).unwrap_or(u32::MAX));
    match registry.cell(id) {
        Some(_) => Ok(id),
        None => Err(fail(
            Error::NoSuchCell,
            format_args!("no cell with id {raw}"),
        )),
    }
}

fn execute(cpu: usize, state: &mut State, command: Command) -> Result<i64, Failure> {
    let args = state.args;
    let registry = &mut state.registry;
    match command {
        Command::Info => {
            let interface = INTERFACE.get().copied();
            let (used, total) = cells::frame_usage();
            let image = interface.map_or(0, |i| i.image);
            let info = HypervisorInfo {
                memory_total: interface.map_or(0, |i| i.memory_total).into(),
                memory_used: (image + used as u64 * 4096).into(),
                memory_free: ((total - used) as u64 * 4096).into(),
                cells: (registry.iter().count() as u32).into(),
                cpus: (super::online_cpus() as u32).into(),
                version: mgmt::VERSION_VALUE.into(),
                root_table_pages: (cells::table_pages(0) as u32).into(),
            };
            write_window(0, info.as_bytes())?;
            Ok(core::mem::size_of::<HypervisorInfo>() as i64)
        }
        Command::CellCreate => create(registry, args[0]),
        Command::CellLoad => {
            let id = cell_of(registry, args[0])?;
            let name = name(registry, id);
            let current = registry.cell(id).map(|c| c.state);
            if !matches!(current, Some(CellState::Created | CellState::Loaded)) {
                return Err(fail(
                    Error::WrongState,
                    format_args!(
                        "cell \"{name}\": load needs a created or loaded cell, it is {}",
                        state_name(current)
                    ),
                ));
            }
            let (address, len, offset) = (args[1], args[2], args[3]);
            let (data, size) = window();
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(fail(
                    Error::InvalidArgument,
                    format_args!("cell \"{name}\": {len} bytes at window offset {offset:#x} exceed the {size}-byte data window"),
                ));
            }
            let phys = registry
                .loadable(id, address, len)
                .map_err(|e| fail(e.code(), format_args!("{e}")))?;
            // SAFETY: the source is inside the data window, the destination inside a loadable
            // region of the cell (checked by the registry), both mapped at EL2; the cell does
            // not run.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    (data + offset) as *const u8,
                    phys as *mut u8,
                    len as usize,
                );
            }
            cache::clean_invalidate(phys as usize, len as usize);
            let _ = registry.set_state(id, CellState::Loaded);
            RUNTIME[id.0 as usize]
                .state
                .store(CellState::Loaded as u32, Ordering::Release);
            Ok(0)
        }
        Command::CellStart => {
            let id = cell_of(registry, args[0])?;
            let name = name(registry, id);
            if id.0 == 0 {
                return Err(fail(
                    Error::Denied,
                    format_args!("the root cell runs already"),
                ));
            }
            let current = registry.cell(id).map(|c| c.state);
            if current != Some(CellState::Loaded) {
                return Err(fail(
                    Error::WrongState,
                    format_args!(
                        "cell \"{name}\": start needs a loaded cell, it is {}",
                        state_name(current)
                    ),
                ));
            }
            let _ = registry.set_state(id, CellState::Running);
            let cell = registry
                .cell(id)
                .ok_or_else(|| fail(Error::NoSuchCell, format_args!("gone")))?;
            let cpus = cell.cpus;
            let runtime = &RUNTIME[id.0 as usize];
            runtime.reset.store(cell.reset_address, Ordering::Release);
            runtime.shutdown_since.store(0, Ordering::Release);
            cells::init_comm_region(id.0 as u16, platform(id, cell));
            runtime
                .state
                .store(CellState::Running as u32, Ordering::Release);
            // Recorded first: what the cell makes the hypervisor print comes after.
            record(format_args!("cellvisor: cell \"{name}\" started\n"));
            for cpu in (0..64).filter(|c| cpus & 1 << c != 0) {
                cells::start_cpu(cpu);
            }
            Ok(0)
        }
        Command::CellShutdown => shutdown(registry, args[0], args[1]),
        Command::CellDestroy => {
            let id = cell_of(registry, args[0])?;
            let name = name(registry, id);
            if id.0 == 0 {
                return Err(fail(
                    Error::Denied,
                    format_args!("the root cell cannot be destroyed"),
                ));
            }
            let cpus = registry.cell(id).map_or(0, |c| c.cpus);
            stop_cpus(&name, cpus)?;
            registry
                .destroy(id, &mut Machine)
                .map_err(|e| fail(e.code(), format_args!("{e}")))?;
            let runtime = &RUNTIME[id.0 as usize];
            runtime.state.store(0, Ordering::Release);
            runtime.name.lock().clear();
            record(format_args!("cellvisor: cell \"{name}\" destroyed\n"));
            let _ = cpu;
            Ok(0)
        }
        Command::CellList => {
            let mut count = 0;
            let ids: heapless::Vec<CellId, { cells::MAX_CELLS }> =
                registry.iter().map(|c| c.id).collect();
            for id in ids {
                let Some(mut record) = registry.record(id) else {
                    continue;
                };
                if let Some(state) =
                    CellState::from_raw(RUNTIME[id.0 as usize].state.load(Ordering::Acquire))
                {
                    record.state = (state as u32).into();
                }
                write_window(count * core::mem::size_of_val(&record), record.as_bytes())?;
                count += 1;
            }
            Ok(count as i64)
        }
        Command::CellStats => {
            let id = cell_of(registry, args[0])?;
            let cpus = registry.cell(id).map_or(0, |c| c.cpus);
            let mut count = 0;
            for cpu in (0..64).filter(|c| cpus & 1 << c != 0) {
                let Some(counters) = cell::counters(cpu) else {
                    continue;
                };
                let mut stats = CpuStats {
                    cpu: (cpu as u32).into(),
                    reasons: (crate::trap::TrapReason::ALL.len() as u32).into(),
                    counts: [0.into(); 12],
                    instructions: [0.into(); 12],
                    measured: [0.into(); 12],
                    min_instructions: [u32::MAX.into(); 12],
                    max_instructions: [0.into(); 12],
                };
                for (i, reason) in crate::trap::TrapReason::ALL.into_iter().enumerate() {
                    let cost = counters.cost(reason);
                    stats.counts[i] = counters.get(reason).into();
                    stats.instructions[i] = cost.instructions.into();
                    stats.measured[i] = cost.measured.into();
                    stats.min_instructions[i] = cost.min.into();
                    stats.max_instructions[i] = cost.max.into();
                }
                write_window(count * core::mem::size_of::<CpuStats>(), stats.as_bytes())?;
                count += 1;
            }
            Ok(count as i64)
        }
        Command::ConsoleRead => {
            let (data, size) = window();
            // SAFETY: the data window is hypervisor memory mapped at EL2, not aliased by any
            // Rust reference.
            let out = unsafe { core::slice::from_raw_parts_mut(data as *mut u8, size as usize) };
            let head = super::console::ring_head();
            if args[0] > head {
                return Err(fail(
                    Error::InvalidArgument,
                    format_args!(
                        "console position {} is beyond the end of the output ({head} bytes so far)",
                        args[0]
                    ),
                ));
            }
            let (copied, oldest) = super::console::ring_read(args[0], out);
            state.args[1] = oldest;
            Ok(copied as i64)
        }
    }
}

fn state_name(state: Option<CellState>) -> &'static str {
    state.map_or("gone", CellState::name)
}

fn name(registry: &Registry<{ cells::MAX_CELLS }>, id: CellId) -> heapless::String<32> {
    let mut name = heapless::String::new();
    if let Some(cell) = registry.cell(id) {
        let _ = name.push_str(cell.name.as_str());
    }
    name
}

fn platform(id: CellId, cell: &cellvisor_cell::Cell) -> Platform {
    let first = (0..64).find(|c| cell.cpus & 1 << c != 0).unwrap_or(0);
    let (gic_version, gicr_or_gicc) = if gic::is_v3() {
        (comm::GIC_V3, gic::redistributor_of(first).unwrap_or(0))
    } else {
        (comm::GIC_V2, gic::cpu_interface().unwrap_or(0))
    };
    let console = &RUNTIME[id.0 as usize].console;
    let (uart_kind, uart) = (
        console.0.load(Ordering::Acquire),
        console.1.load(Ordering::Acquire),
    );
    Platform {
        gic_version: gic_version.into(),
        uart_kind: uart_kind.into(),
        gicd: gic::distributor_base().into(),
        gicr_or_gicc: gicr_or_gicc.into(),
        uart: uart.into(),
        timer_frequency: cells::frequency().into(),
        cpus: cell.cpus.count_ones().into(),
        reserved: 0.into(),
    }
}

fn create(registry: &mut Registry<{ cells::MAX_CELLS }>, len: u64) -> Result<i64, Failure> {
    let (data, size) = window();
    let mut copy = CONFIG_COPY.lock();
    if len == 0 || len > size || len as usize > copy.0.len() {
        return Err(fail(
            Error::InvalidArgument,
            format_args!(
                "a cell configuration of {len} bytes (at most {} fit)",
                copy.0.len().min(size as usize)
            ),
        ));
    }
    let len = len as usize;
    // SAFETY: the data window is hypervisor memory mapped at EL2; the copy is ours.
    unsafe { core::ptr::copy_nonoverlapping(data as *const u8, copy.0.as_mut_ptr(), len) };
    let config = CellConfigView::parse(&copy.0[..len])
        .map_err(|e| fail(Error::BadConfig, format_args!("cell configuration: {e}")))?;
    // Against the system: architecture, the hypervisor's memory and the GIC's frames, lines
    // the interrupt controller has, CPUs the machine has. Against the other cells and the
    // root cell's resources: the registry, which knows who owns what now.
    if let Some(system) = SYSTEM.get() {
        cellvisor_config::check_new_cell(system, &[], &config)
            .map_err(|e| fail(Error::BadConfig, format_args!("cell configuration: {e}")))?;
    }
    let name = config.cell().name();
    // CPUs the root cell has switched off through PSCI CPU_OFF (parked, root-owned).
    let mut offline = 0u64;
    for cpu in 0..64 {
        if cells::owner(cpu) == 0
            && cells::is_parked(cpu)
            && cell::power(cpu).state() == crate::psci::PowerState::Off
        {
            offline |= 1 << cpu;
        }
    }
    let id = registry
        .create(config.cell(), offline, &mut Machine)
        .map_err(|e| fail(e.code(), format_args!("{e}")))?;
    let runtime = &RUNTIME[id.0 as usize];
    {
        let mut stored = runtime.name.lock();
        stored.clear();
        let _ = stored.push_str(name);
    }
    runtime
        .state
        .store(CellState::Created as u32, Ordering::Release);
    let (kind, address) = match config.cell().console() {
        Some(c) if c.kind == cellvisor_config::ConsoleKind::Pl011 => (comm::UART_PL011, c.address),
        Some(c) if c.kind == cellvisor_config::ConsoleKind::Cadence => {
            (comm::UART_CADENCE, c.address)
        }
        _ => (comm::UART_NONE, 0),
    };
    runtime.console.0.store(kind, Ordering::Release);
    runtime.console.1.store(address, Ordering::Release);
    let cpus = registry.cell(id).map_or(0, |c| c.cpus);
    record(format_args!(
        "cellvisor: cell \"{name}\" created (id {}, CPUs {cpus:#x})\n",
        id.0
    ));
    Ok(i64::from(id.0))
}

fn shutdown(
    registry: &mut Registry<{ cells::MAX_CELLS }>,
    raw: u64,
    timeout_ms: u64,
) -> Result<i64, Failure> {
    let id = cell_of(registry, raw)?;
    let name = name(registry, id);
    if id.0 == 0 {
        return Err(fail(
            Error::Denied,
            format_args!("the root cell shuts down with the machine"),
        ));
    }
    if timeout_ms > cellvisor_abi::MAX_SHUTDOWN_TIMEOUT_MS {
        return Err(fail(
            Error::InvalidArgument,
            format_args!(
                "cell \"{name}\": shutdown timeout {timeout_ms} ms is longer than the longest, {} ms (a day)",
                cellvisor_abi::MAX_SHUTDOWN_TIMEOUT_MS
            ),
        ));
    }
    let cell_id = id.0 as u16;
    let runtime = &RUNTIME[usize::from(cell_id)];
    if runtime.state.load(Ordering::Acquire) != CellState::Running as u32 {
        return Ok(0);
    }
    let cpus = registry.cell(id).map_or(0, |c| c.cpus);
    if cells::comm_read(cell_id, comm::offset::LOCK) == Some(1) {
        return Err(fail(
            Error::ShutdownRefused,
            format_args!("cell \"{name}\": it holds its lock against reconfiguration"),
        ));
    }
    let since = runtime.shutdown_since.load(Ordering::Acquire);
    let reply = cells::comm_read(cell_id, comm::offset::REPLY_FROM_CELL);
    let stop = |registry: &mut Registry<{ cells::MAX_CELLS }>| -> Result<i64, Failure> {
        stop_cpus(&name, cpus)?;
        runtime
            .state
            .store(CellState::ShutDown as u32, Ordering::Release);
        runtime.shutdown_since.store(0, Ordering::Release);
        let _ = registry.set_state(id, CellState::ShutDown);
        record(format_args!("cellvisor: cell \"{name}\" shut down\n"));
        Ok(0)
    };
    if reply.is_none() {
        // No communication region: a passive cell, stopped right away.
        return stop(registry);
    }
    if since == 0 {
        cells::comm_write(cell_id, comm::offset::REPLY_FROM_CELL, comm::REPLY_NONE);
        cells::comm_write(
            cell_id,
            comm::offset::MSG_TO_CELL,
            comm::MSG_SHUTDOWN_REQUEST,
        );
        runtime
            .shutdown_since
            .store(cells::ticks().max(1), Ordering::Release);
        return Ok(1);
    }
    match reply {
        Some(comm::REPLY_APPROVED) => stop(registry),
        Some(comm::REPLY_DENIED) => {
            cells::comm_write(cell_id, comm::offset::MSG_TO_CELL, comm::MSG_NONE);
            cells::comm_write(cell_id, comm::offset::REPLY_FROM_CELL, comm::REPLY_NONE);
            runtime.shutdown_since.store(0, Ordering::Release);
            Err(fail(
                Error::ShutdownRefused,
                format_args!("cell \"{name}\": the cell denied the shutdown request"),
            ))
        }
        // At most a day in ms times a counter frequency below 2^37 Hz: no overflow.
        _ if cells::ticks().saturating_sub(since)
            > timeout_ms.saturating_mul(cells::frequency()) / 1000 =>
        {
            stop(registry)
        }
        _ => Ok(1),
    }
}

fn stop_cpus(name: &str, cpus: u64) -> Result<(), Failure> {
    for cpu in (0..64).filter(|c| cpus & 1 << c != 0) {
        if !cells::stop_cpu(cpu) {
            return Err(fail(
                Error::Denied,
                format_args!("cell \"{name}\": CPU {cpu} does not stop"),
            ));
        }
    }
    Ok(())
}

/// On a CPU of a non-root cell: the cell stops itself (failure or its own power-off). Its
/// other CPUs are told to stop; this CPU parks next.
pub fn stop_cell_from_inside(cpu: usize, state: CellState) {
    let cell = cells::owner(cpu);
    let runtime = &RUNTIME[usize::from(cell)];
    runtime.state.store(state as u32, Ordering::Release);
    let cpus = runtime.cpus.load(Ordering::Acquire);
    for other in (0..64).filter(|&c| c != cpu && cpus & 1 << c != 0) {
        cells::stop_cpu(other);
    }
}
