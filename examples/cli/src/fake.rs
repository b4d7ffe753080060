//! A small hypervisor behind a fake control page and data window, and a fake Linux CPU
//! hotplug, for the host tests: cells in a `Vec`, their states, CPU ownership, memory
//! accounting, the shutdown vote, the console ring, and errors with messages, following
//! `cellvisor_abi`. It panics on any access the real interface would not take (unaligned,
//! wrong width, outside the areas), so the tests also check how the tool touches the device.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use cellvisor_abi::{
    mgmt, CellRecord, CellState, Command, CpuStats, Error, HypervisorInfo, TRAP_REASONS,
};
use cellvisor_config::{CellConfigView, MemoryFlags};
use zerocopy::IntoBytes;

use crate::cpus::{CpuState, Cpus};
use crate::device::Device;

/// What the hypervisor keeps per cell (beyond the cell's memory) from its table-frame pool.
pub const CELL_COST: u64 = 64 << 10;

/// A cell's answer to shutdown requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    /// Denied.
    Refuse,
    /// Pending for this many requests, then approved.
    Pending(u32),
}

/// A cell of the fake hypervisor.
#[derive(Debug, Clone)]
pub struct FakeCell {
    pub id: u32,
    pub name: String,
    pub state: CellState,
    pub cpus: u64,
    pub memory: u64,
    /// Loadable regions: guest-physical start and the bytes loaded there.
    pub loadable: Vec<(u64, Vec<u8>)>,
    /// Answers to the coming shutdown requests (none: approve at once).
    pub votes: VecDeque<Vote>,
    /// The flags, entry and argument of its start.
    pub started_with: Option<[u64; 3]>,
}

/// The fake hypervisor.
#[derive(Debug)]
pub struct Hypervisor {
    pub magic: u32,
    pub version: u32,
    pub cpus: u32,
    pub cells: Vec<FakeCell>,
    pub next_id: u32,
    pub memory_total: u64,
    pub memory_free: u64,
    /// The console ring: the bytes still kept and the position of the first.
    pub console: Vec<u8>,
    pub console_start: u64,
    pub console_capacity: usize,
    args: [u64; 4],
    status: i64,
    window: Vec<u64>,
    /// Commands run, in order.
    pub commands: Vec<Command>,
    /// Every cell start fails (a start the hypervisor refuses).
    pub refuse_start: bool,
}

/// Linux and the hypervisor.
#[derive(Debug)]
pub struct Machine {
    pub hv: Hypervisor,
    /// Linux's view of each CPU: `None` if it cannot be taken offline (no `online` file).
    pub linux: Vec<Option<bool>>,
    /// A CPU whose hotplug writes fail with EBUSY.
    pub busy_cpu: Option<u32>,
    /// Whether a [`FakeDevice`] of the host is open: the real device holds an exclusive
    /// `flock` on the interface, so a second open in the same process waits forever.
    pub device_open: bool,
}

impl Machine {
    /// Four CPUs, all the root cell's ("linux", 1016 MiB), CPU 0 not hot-pluggable, and a
    /// data window of `window` bytes.
    pub fn new(window: usize) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self {
            hv: Hypervisor {
                magic: mgmt::MAGIC_VALUE,
                version: mgmt::VERSION_VALUE,
                cpus: 4,
                cells: vec![FakeCell {
                    id: 0,
                    name: "linux".into(),
                    state: CellState::Running,
                    cpus: 0b1111,
                    memory: 1016 << 20,
                    loadable: Vec::new(),
                    votes: VecDeque::new(),
                    started_with: None,
                }],
                next_id: 1,
                memory_total: 8 << 20,
                memory_free: 5 << 20,
                console: Vec::new(),
                console_start: 0,
                console_capacity: 256,
                args: [0; 4],
                status: 0,
                window: vec![0; window / 8],
                commands: Vec::new(),
                refuse_start: false,
            },
            linux: vec![None, Some(true), Some(true), Some(true)],
            busy_cpu: None,
            device_open: false,
        }))
    }
}

impl Hypervisor {
    /// Appends hypervisor console output to the ring.
    pub fn print(&mut self, text: &str) {
        self.console.extend_from_slice(text.as_bytes());
        let excess = self.console.len().saturating_sub(self.console_capacity);
        self.console.drain(..excess);
        self.console_start += excess as u64;
    }

    /// The cell with `id`.
    pub fn cell(&self, id: u32) -> Option<&FakeCell> {
        self.cells.iter().find(|c| c.id == id)
    }

    fn cell_mut(&mut self, id: u32) -> Option<&mut FakeCell> {
        self.cells.iter_mut().find(|c| c.id == id)
    }

    fn window_bytes(&self, len: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = self.window.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.truncate(len);
        bytes
    }

    fn put(&mut self, data: &[u8]) {
        for (i, chunk) in data.chunks(8).enumerate() {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.window[i] = u64::from_le_bytes(word);
        }
    }

    fn window_len(&self) -> usize {
        self.window.len() * 8
    }

    /// Runs a command as the hypervisor does on the trapped COMMAND write.
    fn execute(&mut self, raw: u32, linux: &[Option<bool>]) {
        let outcome = match Command::from_raw(raw) {
            Some(command) => {
                self.commands.push(command);
                self.command(command, linux)
            }
            None => Err((Error::UnknownCommand, format!("command {raw}"))),
        };
        self.status = match outcome {
            Ok(value) => value as i64,
            Err((error, message)) => {
                let mut text = message.into_bytes();
                text.push(0);
                text.truncate(self.window_len());
                self.put(&text);
                error.status()
            }
        };
    }

    fn command(
        &mut self,
        command: Command,
        linux: &[Option<bool>],
    ) -> Result<u64, (Error, String)> {
        let [arg0, arg1, arg2, arg3] = self.args;
        let id = arg0 as u32;
        let no_cell = || (Error::NoSuchCell, format!("no cell with id {arg0}"));
        match command {
            Command::Info => {
                let info = HypervisorInfo {
                    memory_total: self.memory_total.into(),
                    memory_used: (self.memory_total - self.memory_free).into(),
                    memory_free: self.memory_free.into(),
                    cells: (self.cells.len() as u32).into(),
                    cpus: self.cpus.into(),
                    version: mgmt::VERSION_VALUE.into(),
                    root_table_pages: 7.into(),
                };
                self.put(info.as_bytes());
                Ok(size_of::<HypervisorInfo>() as u64)
            }
            Command::CellCreate => {
                let len = arg0 as usize;
                if len > self.window_len() {
                    return Err((
                        Error::InvalidArgument,
                        format!("length {len} beyond the data window"),
                    ));
                }
                let bytes = self.window_bytes(len);
                let view = CellConfigView::parse(&bytes)
                    .map_err(|e| (Error::BadConfig, format!("cell configuration: {e}")))?;
                let cell = view.cell();
                let name = cell.name().to_owned();
                if self.cells.iter().any(|c| c.name == name) {
                    return Err((
                        Error::CellExists,
                        format!("cell {name:?}: the name is taken"),
                    ));
                }
                let mut mask = 0u64;
                for cpu in cell.cpus().iter() {
                    if cpu >= self.cpus || self.cells[0].cpus & (1 << cpu) == 0 {
                        return Err((
                            Error::NotOwned,
                            format!("cell {name:?}: CPU {cpu} is not the root cell's"),
                        ));
                    }
                    if linux.get(cpu as usize).copied().flatten() != Some(false) {
                        return Err((
                            Error::CpuBusy,
                            format!("cell {name:?}: CPU {cpu} is still online in the root cell"),
                        ));
                    }
                    mask |= 1 << cpu;
                }
                if self.memory_free < CELL_COST {
                    return Err((
                        Error::OutOfMemory,
                        format!("cell {name:?}: no table frames left for its stage 2"),
                    ));
                }
                self.memory_free -= CELL_COST;
                let ram =
                    |f: MemoryFlags| !f.intersects(MemoryFlags::IO | MemoryFlags::COMM_REGION);
                let id = self.next_id;
                self.next_id += 1;
                self.cells[0].cpus &= !mask;
                self.cells.push(FakeCell {
                    id,
                    name,
                    state: CellState::Created,
                    cpus: mask,
                    memory: cell
                        .memory_regions()
                        .filter(|r| ram(r.flags))
                        .map(|r| r.size)
                        .sum(),
                    loadable: cell
                        .memory_regions()
                        .filter(|r| r.flags.contains(MemoryFlags::LOADABLE))
                        .map(|r| (r.virt_start, vec![0; r.size as usize]))
                        .collect(),
                    votes: VecDeque::new(),
                    started_with: None,
                });
                Ok(u64::from(id))
            }
            Command::CellLoad => {
                let window = self.window_len() as u64;
                if arg3.checked_add(arg2).is_none_or(|end| end > window) {
                    return Err((
                        Error::InvalidArgument,
                        format!("{arg2} bytes at window offset {arg3} beyond the data window"),
                    ));
                }
                let data = self.window_bytes((arg3 + arg2) as usize)[arg3 as usize..].to_vec();
                let cell = self.cell_mut(id).ok_or_else(no_cell)?;
                let name = cell.name.clone();
                if id == 0
                    || !matches!(
                        cell.state,
                        CellState::Created | CellState::Loaded | CellState::Reset
                    )
                {
                    return Err((
                        Error::WrongState,
                        format!(
                            "cell {name:?} is {}: images are loaded before start",
                            cell.state.name()
                        ),
                    ));
                }
                let Some((start, memory)) = cell
                    .loadable
                    .iter_mut()
                    .find(|(start, memory)| (*start..*start + memory.len() as u64).contains(&arg1))
                else {
                    return Err((
                        Error::InvalidArgument,
                        format!("cell {name:?}: {arg1:#x} is in no loadable region"),
                    ));
                };
                let offset = (arg1 - *start) as usize;
                if offset + data.len() > memory.len() {
                    return Err((
                        Error::ImageTooLarge,
                        format!(
                            "cell {name:?}: {} bytes at {arg1:#x} end beyond the region at {:#x} of {:#x} bytes",
                            data.len(),
                            start,
                            memory.len()
                        ),
                    ));
                }
                memory[offset..offset + data.len()].copy_from_slice(&data);
                cell.state = CellState::Loaded;
                Ok(0)
            }
            Command::CellStart => {
                if self.refuse_start {
                    return Err((Error::Denied, "refused for the test".into()));
                }
                let cell = self.cell_mut(id).ok_or_else(no_cell)?;
                match cell.state {
                    CellState::Loaded | CellState::ShutDown if id != 0 => {
                        cell.state = CellState::Running;
                        cell.started_with = Some([arg1, arg2, arg3]);
                        Ok(0)
                    }
                    CellState::Created => Err((
                        Error::WrongState,
                        format!("cell {:?} has no image loaded", cell.name),
                    )),
                    state => Err((
                        Error::WrongState,
                        format!("cell {:?} is {}", cell.name, state.name()),
                    )),
                }
            }
            Command::CellShutdown => {
                if id == 0 {
                    return Err((Error::Denied, "the root cell cannot be shut down".into()));
                }
                let cell = self.cell_mut(id).ok_or_else(no_cell)?;
                if cell.state != CellState::Running {
                    return Ok(0);
                }
                match cell.votes.front_mut() {
                    Some(Vote::Refuse) => {
                        cell.votes.pop_front();
                        Err((
                            Error::ShutdownRefused,
                            format!("cell {:?} voted against its shutdown", cell.name),
                        ))
                    }
                    Some(Vote::Pending(n)) if *n > 0 => {
                        *n -= 1;
                        Ok(1)
                    }
                    _ => {
                        cell.votes.pop_front();
                        cell.state = CellState::ShutDown;
                        Ok(0)
                    }
                }
            }
            Command::CellDestroy => {
                if id == 0 {
                    return Err((Error::Denied, "the root cell cannot be destroyed".into()));
                }
                let index = self
                    .cells
                    .iter()
                    .position(|c| c.id == id)
                    .ok_or_else(no_cell)?;
                let cell = self.cells.remove(index);
                self.cells[0].cpus |= cell.cpus;
                self.memory_free += CELL_COST;
                Ok(0)
            }
            Command::CellList => {
                let records: Vec<CellRecord> = self
                    .cells
                    .iter()
                    .map(|c| CellRecord {
                        id: c.id.into(),
                        state: (c.state as u32).into(),
                        cpus: c.cpus.into(),
                        memory: c.memory.into(),
                        name: CellRecord::name_field(&c.name),
                    })
                    .collect();
                self.put(records.as_bytes());
                Ok(records.len() as u64)
            }
            Command::CellStats => {
                let cell = self.cell(id).ok_or_else(no_cell)?;
                let stats: Vec<CpuStats> = crate::cpus::cpus_of(cell.cpus)
                    .map(|cpu| {
                        let mut counts = [0u64.into(); 12];
                        for (i, count) in counts.iter_mut().enumerate().take(TRAP_REASONS.len()) {
                            *count = (u64::from(cpu) * 100 + i as u64).into();
                        }
                        // The fake measured the first two reasons: irq (10 traps of 100 to
                        // 300 instructions, 2000 in all) and maintenance (one of 150).
                        let mut instructions = [0u64.into(); 12];
                        let mut measured = [0u64.into(); 12];
                        let mut min_instructions = [u32::MAX.into(); 12];
                        let mut max_instructions = [0u32.into(); 12];
                        for (i, (n, sum, min, max)) in [(10, 2000, 100, 300), (1, 150, 150, 150)]
                            .into_iter()
                            .enumerate()
                        {
                            measured[i] = n.into();
                            instructions[i] = sum.into();
                            min_instructions[i] = min.into();
                            max_instructions[i] = max.into();
                        }
                        CpuStats {
                            cpu: cpu.into(),
                            reasons: (TRAP_REASONS.len() as u32).into(),
                            counts,
                            instructions,
                            measured,
                            min_instructions,
                            max_instructions,
                        }
                    })
                    .collect();
                self.put(stats.as_bytes());
                Ok(stats.len() as u64)
            }
            Command::ConsoleRead => {
                let from = arg0.max(self.console_start);
                self.args[1] = from;
                let skip = (from - self.console_start) as usize;
                let available = self.console.get(skip..).unwrap_or_default();
                let count = available.len().min(self.window_len());
                let data = available[..count].to_vec();
                self.put(&data);
                Ok(count as u64)
            }
        }
    }
}

/// The fake control page and data window.
#[derive(Debug, Clone)]
pub struct FakeDevice(pub Rc<RefCell<Machine>>);

impl Drop for FakeDevice {
    fn drop(&mut self) {
        if let Ok(mut machine) = self.0.try_borrow_mut() {
            machine.device_open = false;
        }
    }
}

impl Device for FakeDevice {
    fn read32(&mut self, offset: usize) -> u32 {
        let machine = self.0.borrow();
        match offset {
            mgmt::MAGIC => machine.hv.magic,
            mgmt::VERSION => machine.hv.version,
            _ => panic!("32-bit read at {offset:#x} of the control page"),
        }
    }

    fn read64(&mut self, offset: usize) -> u64 {
        let machine = self.0.borrow();
        match offset {
            mgmt::DATA_SIZE => machine.hv.window_len() as u64,
            mgmt::ARG0 | mgmt::ARG1 | mgmt::ARG2 | mgmt::ARG3 => {
                machine.hv.args[(offset - mgmt::ARG0) / 8]
            }
            mgmt::STATUS => machine.hv.status as u64,
            _ => panic!("64-bit read at {offset:#x} of the control page"),
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        assert_eq!(offset, mgmt::COMMAND, "32-bit write at {offset:#x}");
        let machine = &mut *self.0.borrow_mut();
        machine.hv.execute(value, &machine.linux);
    }

    fn write64(&mut self, offset: usize, value: u64) {
        assert!(
            (mgmt::ARG0..=mgmt::ARG3).contains(&offset) && offset.is_multiple_of(8),
            "64-bit write at {offset:#x}"
        );
        self.0.borrow_mut().hv.args[(offset - mgmt::ARG0) / 8] = value;
    }

    fn window_len(&self) -> usize {
        self.0.borrow().hv.window_len()
    }

    fn window_read64(&mut self, offset: usize) -> u64 {
        assert_eq!(offset % 8, 0, "unaligned window read at {offset:#x}");
        self.0.borrow().hv.window[offset / 8]
    }

    fn window_write64(&mut self, offset: usize, value: u64) {
        assert_eq!(offset % 8, 0, "unaligned window write at {offset:#x}");
        self.0.borrow_mut().hv.window[offset / 8] = value;
    }
}

/// Linux's CPU hotplug of the fake machine.
#[derive(Debug, Clone)]
pub struct FakeCpus(pub Rc<RefCell<Machine>>);

impl Cpus for FakeCpus {
    fn state(&self, cpu: u32) -> io::Result<CpuState> {
        Ok(match self.0.borrow().linux.get(cpu as usize) {
            None => CpuState::Absent,
            Some(None) => CpuState::Fixed,
            Some(Some(true)) => CpuState::Online,
            Some(Some(false)) => CpuState::Offline,
        })
    }

    fn set_online(&mut self, cpu: u32, online: bool) -> io::Result<()> {
        let mut machine = self.0.borrow_mut();
        if machine.busy_cpu == Some(cpu) {
            return Err(io::Error::from_raw_os_error(16));
        }
        match machine.linux.get_mut(cpu as usize) {
            Some(Some(state)) => {
                *state = online;
                Ok(())
            }
            _ => Err(io::Error::from_raw_os_error(2)),
        }
    }

    fn control(&self, cpu: u32) -> String {
        format!("/sys/devices/system/cpu/cpu{cpu}/online")
    }
}
