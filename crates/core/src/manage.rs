//! The management interface of the root cell (`cellvisor-abi` `mgmt`): a trapped control page
//! and a data window, and the cell operations behind its commands.
//!
//! Every command runs under one lock, on the root-cell CPU that wrote the command register,
//! the way Jailhouse serialises its management hypercalls. Root userspace can write the data
//! window at any time, also while a command runs: the hypervisor copies what it reads out of
//! it first (a cell configuration into its own buffer) and reaches it only through the
//! architecture's volatile copies.

use crate::arch::Arch;
use crate::machine::Machine;
use crate::{Hypervisor, Management, TrapReason, MAX_CELLS, MAX_CPUS};
use cellvisor_abi::comm;
use cellvisor_abi::{mgmt, CellState, Command, CpuStats, Error, HypervisorInfo};
use cellvisor_cell::{CellId, Registry};
use cellvisor_config::{CellConfigView, SystemConfigView};
use cellvisor_paging::PhysAddr;
use core::fmt::Write as _;
use core::sync::atomic::Ordering;
use zerocopy::IntoBytes;

/// Where the interface is, in the root cell's (identity-mapped) address space, and what
/// [`Command::Info`] reports about the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    /// The control page.
    pub control: u64,
    /// The data window (physical = root-cell address).
    pub data: u64,
    /// Its size, at least 256 bytes.
    pub data_size: u64,
    /// Bytes of hypervisor memory.
    pub memory_total: u64,
    /// Bytes of the image.
    pub image: u64,
    /// CPUs running the hypervisor.
    pub cpus: u32,
}

/// A failed command; its message is in the data window already.
struct Failure(Error);

impl<A: Arch> Hypervisor<A> {
    /// Sets the interface up with the root cell's registry, built in place from the system
    /// configuration (the registry is tens of KiB: no copies on the stack). Once only.
    pub fn init_management(
        &self,
        interface: Interface,
        config: &SystemConfigView<'static>,
    ) -> Result<(), cellvisor_cell::RootError> {
        self.management.try_call_once(|| {
            Registry::from_system(config).map(|registry| {
                cellvisor_sync::Mutex::new(Management {
                    registry,
                    args: [0; 4],
                    status: 0,
                })
            })
        })?;
        self.interface.call_once(|| interface);
        self.system.call_once(|| *config);
        self.root_executable.call_once(|| {
            let mut ranges = heapless::Vec::new();
            for region in config.root_cell().memory_regions() {
                let range = crate::runtime::executable_ram(&region);
                if range.is_some_and(|r| ranges.push((r.start, r.end)).is_err()) {
                    // More than the list holds: the configuration is searched instead.
                    return None;
                }
            }
            Some(ranges)
        });
        Ok(())
    }

    /// Whether root-cell address `ipa` is in the control page.
    #[inline]
    pub fn mgmt_contains(&self, ipa: u64) -> bool {
        self.interface
            .get()
            .is_some_and(|i| (i.control..i.control + mgmt::PAGE_SIZE).contains(&ipa))
    }

    /// Emulates one access of the root cell on `cpu` to the control page at `ipa`: a store
    /// of `value` (`write`) or a load, whose value it returns. `None`: no interface, or a
    /// store. Inlined into the trap handler: a register access must cost no more than the
    /// check and the lock; the commands run out of line.
    #[inline]
    pub fn mgmt_access(&self, cpu: usize, ipa: u64, write: bool, value: u64) -> Option<u64> {
        let interface = self.interface.get()?;
        let offset = ipa.checked_sub(interface.control)? as usize;
        let mut state = self.management.get()?.lock();
        if write {
            match offset {
                mgmt::ARG0 | mgmt::ARG1 | mgmt::ARG2 | mgmt::ARG3 => {
                    state.args[(offset - mgmt::ARG0) / 8] = value;
                }
                mgmt::COMMAND => {
                    let status = self.run(cpu, &mut state, value as u32);
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

    /// The data window: (address, size).
    fn window(&self) -> (u64, u64) {
        self.interface
            .get()
            .map_or((0, 0), |i| (i.data, i.data_size))
    }

    /// Writes the message of a failure to the data window.
    fn fail(&self, error: Error, args: core::fmt::Arguments<'_>) -> Failure {
        let mut message = heapless::String::<256>::new();
        let _ = message.write_fmt(args);
        let (data, size) = self.window();
        if size > 0 {
            let bytes = message.as_bytes();
            let len = bytes.len().min(size as usize - 1);
            self.arch.write(PhysAddr::new(data), &bytes[..len]);
            self.arch.write(PhysAddr::new(data + len as u64), &[0]);
        }
        Failure(error)
    }

    fn write_window(&self, offset: usize, bytes: &[u8]) -> Result<(), Failure> {
        let (data, size) = self.window();
        if offset + bytes.len() > size as usize {
            return Err(self.fail(
                Error::InvalidArgument,
                format_args!(
                    "the answer needs {} bytes, the data window has {size}",
                    offset + bytes.len()
                ),
            ));
        }
        self.arch.write(PhysAddr::new(data + offset as u64), bytes);
        Ok(())
    }

    /// One command. Kept out of line: the register accesses of [`mgmt_access`] are the common
    /// trap, and the commands' stack frame (messages, copies) would cost them every time.
    ///
    /// [`mgmt_access`]: Self::mgmt_access
    #[inline(never)]
    fn run(&self, cpu: usize, state: &mut Management, raw: u32) -> i64 {
        let Some(command) = Command::from_raw(raw) else {
            return self
                .fail(Error::UnknownCommand, format_args!("unknown command {raw}"))
                .0
                .status();
        };
        self.sync_states(&mut state.registry);
        match self.execute(cpu, state, command) {
            Ok(result) => result,
            Err(Failure(error)) => error.status(),
        }
    }

    /// The registry's view of states the cells' CPUs changed themselves (failed, shut down).
    fn sync_states(&self, registry: &mut Registry<MAX_CELLS>) {
        for id in 1..MAX_CELLS as u32 {
            let Some(actual) = CellState::from_raw(self.cells[id as usize].state()) else {
                continue;
            };
            let id = CellId(id);
            if registry.cell(id).is_some_and(|cell| cell.state != actual) {
                let _ = registry.set_state(id, actual);
            }
        }
    }

    fn cell_of(&self, registry: &Registry<MAX_CELLS>, raw: u64) -> Result<CellId, Failure> {
        let id = CellId(u32::try_from(raw).unwrap_or(u32::MAX));
        match registry.cell(id) {
            Some(_) => Ok(id),
            None => Err(self.fail(Error::NoSuchCell, format_args!("no cell with id {raw}"))),
        }
    }

    fn execute(
        &self,
        _cpu: usize,
        state: &mut Management,
        command: Command,
    ) -> Result<i64, Failure> {
        let args = state.args;
        let registry = &mut state.registry;
        match command {
            Command::Info => {
                let interface = self.interface.get().copied();
                let (used, total) = self.frame_usage();
                let image = interface.map_or(0, |i| i.image);
                let info = HypervisorInfo {
                    memory_total: interface.map_or(0, |i| i.memory_total).into(),
                    memory_used: (image + used as u64 * 4096).into(),
                    memory_free: ((total - used) as u64 * 4096).into(),
                    cells: (registry.iter().count() as u32).into(),
                    cpus: interface.map_or(0, |i| i.cpus).into(),
                    version: mgmt::VERSION_VALUE.into(),
                    root_table_pages: (self.table_pages(CellId(0)) as u32).into(),
                };
                self.write_window(0, info.as_bytes())?;
                Ok(core::mem::size_of::<HypervisorInfo>() as i64)
            }
            Command::CellCreate => self.create(registry, args[0]),
            Command::CellLoad => self.load(registry, args),
            Command::CellStart => self.start(registry, args),
            Command::CellShutdown => self.shutdown(registry, args[0], args[1]),
            Command::CellDestroy => self.destroy(registry, args[0]),
            Command::CellList => {
                let mut count = 0;
                let ids: heapless::Vec<CellId, MAX_CELLS> = registry.iter().map(|c| c.id).collect();
                for id in ids {
                    let Some(mut record) = registry.record(id) else {
                        continue;
                    };
                    if let Some(state) = CellState::from_raw(self.cell(id).state()) {
                        record.state = (state as u32).into();
                    }
                    self.write_window(count * core::mem::size_of_val(&record), record.as_bytes())?;
                    count += 1;
                }
                Ok(count as i64)
            }
            Command::CellStats => {
                let id = self.cell_of(registry, args[0])?;
                let cpus = registry.cell(id).map_or(0, |c| c.cpus);
                let mut count = 0;
                for cpu in (0..MAX_CPUS).filter(|c| cpus & 1 << c != 0) {
                    let counters = &self.cpu(cpu).counters;
                    let mut stats = CpuStats {
                        cpu: (cpu as u32).into(),
                        reasons: (TrapReason::ALL.len() as u32).into(),
                        counts: [0.into(); 12],
                        instructions: [0.into(); 12],
                        measured: [0.into(); 12],
                        min_instructions: [u32::MAX.into(); 12],
                        max_instructions: [0.into(); 12],
                    };
                    for (i, reason) in TrapReason::ALL.into_iter().enumerate() {
                        let cost = counters.cost(reason);
                        stats.counts[i] = counters.get(reason).into();
                        stats.instructions[i] = cost.instructions.into();
                        stats.measured[i] = cost.measured.into();
                        stats.min_instructions[i] = cost.min.into();
                        stats.max_instructions[i] = cost.max.into();
                    }
                    self.write_window(count * core::mem::size_of::<CpuStats>(), stats.as_bytes())?;
                    count += 1;
                }
                Ok(count as i64)
            }
            Command::ConsoleRead => {
                let head = self.ring.head();
                if args[0] > head {
                    return Err(self.fail(
                        Error::InvalidArgument,
                        format_args!(
                            "console position {} is beyond the end of the output ({head} bytes so far)",
                            args[0]
                        ),
                    ));
                }
                let (data, size) = self.window();
                let oldest = head.saturating_sub(crate::RING_SIZE as u64);
                let start = args[0].max(oldest);
                let mut copied = 0usize;
                let mut chunk = [0u8; 256];
                while (copied as u64) < size {
                    let want = chunk.len().min(size as usize - copied);
                    let at = start + copied as u64;
                    let (n, now_oldest) = self.ring.read(at, &mut chunk[..want]);
                    // Stop where the output ends, or where new output overtook the reader.
                    if n == 0 || now_oldest > at {
                        break;
                    }
                    self.arch
                        .write(PhysAddr::new(data + copied as u64), &chunk[..n]);
                    copied += n;
                }
                state.args[1] = oldest;
                Ok(copied as i64)
            }
        }
    }

    fn create(&self, registry: &mut Registry<MAX_CELLS>, len: u64) -> Result<i64, Failure> {
        let (data, size) = self.window();
        let mut copy = self.config_copy.lock();
        if len == 0 || len > size || len as usize > copy.len() {
            return Err(self.fail(
                Error::InvalidArgument,
                format_args!(
                    "a cell configuration of {len} bytes (at most {} fit)",
                    copy.len().min(size as usize)
                ),
            ));
        }
        let len = len as usize;
        self.arch.read(PhysAddr::new(data), &mut copy[..len]);
        let config = CellConfigView::parse(&copy[..len])
            .map_err(|e| self.fail(Error::BadConfig, format_args!("cell configuration: {e}")))?;
        // Against the system: architecture, the hypervisor's memory and the interrupt
        // controller's frames, lines it has, CPUs the machine has. Against the other cells
        // and the root cell's resources: the registry, which knows who owns what now.
        if let Some(system) = self.system.get() {
            cellvisor_config::check_new_cell(system, &[], &config).map_err(|e| {
                self.fail(Error::BadConfig, format_args!("cell configuration: {e}"))
            })?;
        }
        let name = config.cell().name();
        // CPUs the root cell has switched off (parked, root-owned, powered off), lent to the
        // new cell: the root cell's CPU_ON cannot start them while they change hands.
        let mut lent = 0u64;
        for cpu in config.cell().cpus().iter().map(|c| c as usize) {
            // One the root cell switched off just now may still be on its way into the park
            // loop (on x86, from Linux's offline to the vCPU's HLT): waited for, briefly.
            if cpu < MAX_CPUS && self.owner(cpu).0 == 0 {
                self.await_off_and_parked(cpu, 100);
            }
            if cpu < MAX_CPUS && self.owner(cpu).0 == 0 && self.cpu(cpu).power.lend() {
                if self.is_parked(cpu) {
                    lent |= 1 << cpu;
                } else {
                    // Still on its way into the park loop (a CPU_OFF under way).
                    self.cpu(cpu).power.reclaim();
                }
            }
        }
        let id = match registry.create(config.cell(), lent, &mut Machine(self)) {
            Ok(id) => id,
            Err(e) => {
                for cpu in (0..MAX_CPUS).filter(|c| lent & 1 << c != 0) {
                    self.cpu(cpu).power.reclaim();
                }
                return Err(self.fail(e.code(), format_args!("{e}")));
            }
        };
        let runtime = self.cell(id);
        {
            let mut stored = runtime.name.lock();
            stored.clear();
            let _ = stored.push_str(name);
        }
        runtime
            .state
            .store(CellState::Created as u32, Ordering::Release);
        let (kind, address) = match config.cell().console() {
            Some(c) if c.kind == cellvisor_config::ConsoleKind::Pl011 => {
                (comm::UART_PL011, c.address)
            }
            Some(c) if c.kind == cellvisor_config::ConsoleKind::Cadence => {
                (comm::UART_CADENCE, c.address)
            }
            _ => (comm::UART_NONE, 0),
        };
        runtime.console.0.store(kind, Ordering::Release);
        runtime.console.1.store(address, Ordering::Release);
        let cpus = registry.cell(id).map_or(0, |c| c.cpus);
        self.record(format_args!(
            "cellvisor: cell \"{name}\" created (id {}, CPUs {cpus:#x})\n",
            id.0
        ));
        Ok(i64::from(id.0))
    }

    fn load(&self, registry: &mut Registry<MAX_CELLS>, args: [u64; 4]) -> Result<i64, Failure> {
        let id = self.cell_of(registry, args[0])?;
        let name = name(registry, id);
        let current = registry.cell(id).map(|c| c.state);
        // A cell stopped by its own reset is loaded again by its loader.
        if !matches!(
            current,
            Some(CellState::Created | CellState::Loaded | CellState::Reset)
        ) {
            return Err(self.fail(
                Error::WrongState,
                format_args!(
                    "cell \"{name}\": load needs a created, loaded or reset cell, it is {}",
                    state_name(current)
                ),
            ));
        }
        let (address, len, offset) = (args[1], args[2], args[3]);
        let (data, size) = self.window();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(self.fail(
                Error::InvalidArgument,
                format_args!("cell \"{name}\": {len} bytes at window offset {offset:#x} exceed the {size}-byte data window"),
            ));
        }
        let phys = registry
            .loadable(id, address, len)
            .map_err(|e| self.fail(e.code(), format_args!("{e}")))?;
        // The source is inside the data window, the destination inside a loadable region of
        // the cell (checked by the registry); the cell does not run.
        let phys = PhysAddr::new(phys);
        self.arch.copy(phys, PhysAddr::new(data + offset), len);
        self.arch.clean(phys, len);
        let _ = registry.set_state(id, CellState::Loaded);
        self.cell(id)
            .state
            .store(CellState::Loaded as u32, Ordering::Release);
        Ok(0)
    }

    fn start(&self, registry: &mut Registry<MAX_CELLS>, args: [u64; 4]) -> Result<i64, Failure> {
        let [raw, flags, entry, arg] = args;
        let id = self.cell_of(registry, raw)?;
        let name = name(registry, id);
        if id.0 == 0 {
            return Err(self.fail(Error::Denied, format_args!("the root cell runs already")));
        }
        let current = registry.cell(id).map(|c| c.state);
        if current != Some(CellState::Loaded) {
            return Err(self.fail(
                Error::WrongState,
                format_args!(
                    "cell \"{name}\": start needs a loaded cell, it is {}",
                    state_name(current)
                ),
            ));
        }
        if flags & !cellvisor_abi::start::ALL != 0 {
            return Err(self.fail(
                Error::InvalidArgument,
                format_args!("cell \"{name}\": unknown start flags {flags:#x}"),
            ));
        }
        let at = flags & cellvisor_abi::start::AT != 0;
        if at && self.ram_address(id, entry).is_none() {
            return Err(self.fail(
                Error::InvalidArgument,
                format_args!("cell \"{name}\": start address {entry:#x} is not in its RAM"),
            ));
        }
        let _ = registry.set_state(id, CellState::Running);
        let Some(cell) = registry.cell(id) else {
            return Err(self.fail(Error::NoSuchCell, format_args!("no cell with id {raw}")));
        };
        let (reset, arg) = if at {
            (entry, arg)
        } else {
            (cell.reset_address, 0)
        };
        let cpus = cell.cpus;
        let runtime = self.cell(id);
        let boot_cpu_only = flags & cellvisor_abi::start::BOOT_CPU_ONLY != 0
            || self.arch.cell_start() == crate::arch::CellStart::FirstCpu;
        runtime.boot_cpu_only.store(boot_cpu_only, Ordering::SeqCst);
        runtime.stock_os.store(
            flags & cellvisor_abi::start::STOCK_OS != 0,
            Ordering::Release,
        );
        runtime.no_restart_in_place.store(
            flags & cellvisor_abi::start::NO_RESTART_IN_PLACE != 0,
            Ordering::Release,
        );
        runtime.start_arg.store(arg, Ordering::Release);
        runtime.reset.store(reset, Ordering::Release);
        // Recorded first: what the cell makes the hypervisor print comes after.
        self.record(format_args!("cellvisor: cell \"{name}\" started\n"));
        self.launch(id, cpus);
        Ok(0)
    }

    /// Starts cell `id`, whose CPUs `cpus` are parked or about to park, as its start
    /// (and its reset) does: a fresh communication region, the state running, every CPU
    /// woken at the cell's reset address, or only the first and the others off for it to
    /// power on ([`CellRuntime::boot_cpu_only`](crate::CellRuntime)).
    pub(crate) fn launch(&self, id: CellId, cpus: u64) {
        let runtime = self.cell(id);
        let boot_cpu_only = runtime.boot_cpu_only.load(Ordering::SeqCst);
        runtime.shutdown_since.store(0, Ordering::Release);
        runtime.stopping.store(false, Ordering::SeqCst);
        let console = (
            runtime.console.0.load(Ordering::Acquire),
            runtime.console.1.load(Ordering::Acquire),
        );
        self.init_comm_region(id, self.arch.platform(cpus, console));
        runtime
            .state
            .store(CellState::Running as u32, Ordering::Release);
        let first = cpus.trailing_zeros() as usize;
        for cpu in (0..MAX_CPUS).filter(|c| cpus & 1 << c != 0) {
            if !boot_cpu_only || cpu == first {
                // On once it takes the start (`take_entry`).
                self.start_cpu(cpu);
            } else {
                // Off, for a CPU of the cell to power on; a stop request left from before
                // (its root cell vCPU's, its last cell's, the reset's) does not hold it
                // back.
                self.cpu(cpu).stop.store(false, Ordering::SeqCst);
                self.cpu(cpu).power.reclaim();
            }
        }
    }

    fn destroy(&self, registry: &mut Registry<MAX_CELLS>, raw: u64) -> Result<i64, Failure> {
        let id = self.cell_of(registry, raw)?;
        let name = name(registry, id);
        if id.0 == 0 {
            return Err(self.fail(
                Error::Denied,
                format_args!("the root cell cannot be destroyed"),
            ));
        }
        let cpus = registry.cell(id).map_or(0, |c| c.cpus);
        self.stop_cpus(id, &name, cpus)?;
        let result = registry.destroy(id, &mut Machine(self));
        // A step that fails does not keep the cell: the registry takes the other steps and
        // forgets it all the same, and so does the runtime (a slot with a state and no cell
        // would be listed by nobody and reused by the next create).
        if registry.cell(id).is_none() {
            let runtime = self.cell(id);
            runtime.state.store(0, Ordering::Release);
            runtime.name.lock().clear();
            self.record(format_args!("cellvisor: cell \"{name}\" destroyed\n"));
        }
        result.map_err(|e| self.fail(e.code(), format_args!("{e}")))?;
        Ok(0)
    }

    fn shutdown(
        &self,
        registry: &mut Registry<MAX_CELLS>,
        raw: u64,
        timeout_ms: u64,
    ) -> Result<i64, Failure> {
        let id = self.cell_of(registry, raw)?;
        let name = name(registry, id);
        if id.0 == 0 {
            return Err(self.fail(
                Error::Denied,
                format_args!("the root cell shuts down with the machine"),
            ));
        }
        if timeout_ms > cellvisor_abi::MAX_SHUTDOWN_TIMEOUT_MS {
            return Err(self.fail(
                Error::InvalidArgument,
                format_args!(
                    "cell \"{name}\": shutdown timeout {timeout_ms} ms is longer than the longest, {} ms (a day)",
                    cellvisor_abi::MAX_SHUTDOWN_TIMEOUT_MS
                ),
            ));
        }
        let runtime = self.cell(id);
        if runtime.state() != CellState::Running as u32 {
            return Ok(0);
        }
        let cpus = registry.cell(id).map_or(0, |c| c.cpus);
        if self.comm_read(id, comm::offset::LOCK) == Some(1) {
            return Err(self.fail(
                Error::ShutdownRefused,
                format_args!("cell \"{name}\": it holds its lock against reconfiguration"),
            ));
        }
        let since = runtime.shutdown_since.load(Ordering::Acquire);
        let reply = self.comm_read(id, comm::offset::REPLY_FROM_CELL);
        let stop = |registry: &mut Registry<MAX_CELLS>, why: &str| -> Result<i64, Failure> {
            self.stop_cpus(id, &name, cpus)?;
            runtime
                .state
                .store(CellState::ShutDown as u32, Ordering::Release);
            runtime.shutdown_since.store(0, Ordering::Release);
            let _ = registry.set_state(id, CellState::ShutDown);
            self.record(format_args!("cellvisor: cell \"{name}\" shut down{why}\n"));
            Ok(0)
        };
        if reply.is_none() {
            // No communication region: a passive cell (an inmate without one, a stock
            // kernel), stopped right away.
            return stop(
                registry,
                " (it has no communication region to be asked in: stopped at once)",
            );
        }
        if since == 0 {
            self.comm_write(id, comm::offset::REPLY_FROM_CELL, comm::REPLY_NONE);
            self.comm_write(id, comm::offset::MSG_TO_CELL, comm::MSG_SHUTDOWN_REQUEST);
            runtime
                .shutdown_since
                .store(self.arch.now().max(1), Ordering::Release);
            return Ok(1);
        }
        match reply {
            Some(comm::REPLY_APPROVED) => stop(registry, ""),
            Some(comm::REPLY_DENIED) => {
                self.comm_write(id, comm::offset::MSG_TO_CELL, comm::MSG_NONE);
                self.comm_write(id, comm::offset::REPLY_FROM_CELL, comm::REPLY_NONE);
                runtime.shutdown_since.store(0, Ordering::Release);
                Err(self.fail(
                    Error::ShutdownRefused,
                    format_args!("cell \"{name}\": the cell denied the shutdown request"),
                ))
            }
            // At most a day in ms times a counter frequency below 2^37 Hz: no overflow.
            _ if self.arch.now().saturating_sub(since)
                > timeout_ms.saturating_mul(self.arch.frequency()) / 1000 =>
            {
                stop(
                    registry,
                    " (it did not answer the request in time: stopped)",
                )
            }
            _ => Ok(1),
        }
    }

    /// Stops the CPUs `cpus` of cell `id`, which none of them starts again.
    fn stop_cpus(&self, id: CellId, name: &str, cpus: u64) -> Result<(), Failure> {
        self.cell(id).stopping.store(true, Ordering::SeqCst);
        for cpu in (0..MAX_CPUS).filter(|c| cpus & 1 << c != 0) {
            if !self.stop_cpu(cpu) {
                return Err(self.fail(
                    Error::Denied,
                    format_args!("cell \"{name}\": CPU {cpu} does not stop"),
                ));
            }
        }
        Ok(())
    }
}

fn state_name(state: Option<CellState>) -> &'static str {
    state.map_or("gone", CellState::name)
}

fn name(registry: &Registry<MAX_CELLS>, id: CellId) -> heapless::String<32> {
    let mut name = heapless::String::new();
    if let Some(cell) = registry.cell(id) {
        let _ = name.push_str(cell.name.as_str());
    }
    name
}
