//! The management interface of `cellvisor-core` end to end, as root userspace drives it: the
//! control page and the data window of a fake QEMU `virt` machine (`FakeArch`: CPU 0 is the
//! fuzzer's thread, CPUs 1 to 3 are threads that run what the core gives them), booted once
//! per process. Each input is a sequence of operations:
//!
//! - `cell create` with the data window holding a stock configuration (demo, ticker, or a
//!   cell with two CPUs), one generated from the fuzzer's choices out of the root cell's
//!   regions, either of them with bytes flipped (the header repaired or not), or arbitrary
//!   bytes (behind a repaired header or not); `ARG0` its length or any other;
//! - `cell load` (fuzzer bytes in the window, any id, address, length and window offset),
//!   `start`, a create-load-start in one, `shutdown` with short or invalid timeouts, the
//!   cell's answer in its communication region (any field, any value), `destroy`, `list`,
//!   `info`, `stats`, `console` from any position;
//! - any command word with any arguments, any load or store at any offset of the control
//!   page (and outside it), arbitrary bytes anywhere in the data window;
//! - the machine misbehaving: a cell that breaks the rules, the root cell too, a CPU that
//!   ignores stop requests until the next operation (once per input: each ignored stop
//!   costs 100 ms), an interrupt line the controller refuses to move.
//!
//! Checked after every operation: no panic; every status is a result or a known error code,
//! with a UTF-8 message in the window on failure; each CPU belongs to exactly the cell its
//! owner says; a cell slot has tables exactly when it has a state; `cell list` shows exactly
//! the cells with a state, with their CPUs. At the end, with every CPU answering and every
//! cell destroyed: the table frames in use, the root cell's table pages, CPUs and memory, the
//! CPU owners are as after boot, and CPUs 1 to 3 are parked and off.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use cellvisor_abi::comm::{self, offset};
use cellvisor_abi::{mgmt, CellRecord, Command, Error, HypervisorInfo};
use cellvisor_cell::CellId;
use cellvisor_config::text::{cell_from_toml, system_from_toml};
use cellvisor_config::{
    layout, CellConfig, CpuSet, IrqRange, MemoryFlags, MemoryRegion, SystemConfigView,
};
use cellvisor_core::fake::{run_cpu, FakeArch, CPUS, FRAMES, INTERFACE};
use cellvisor_core::{Hypervisor, PowerState, Verdict, MAX_CELLS};
use cellvisor_paging::PhysAddr;
use libfuzzer_sys::fuzz_target;
use zerocopy::FromBytes;

const SYSTEM: &str = include_str!("../../../../platforms/qemu-arm64/config/system-gicv3.toml");
const DEMO: &str = include_str!("../../../../platforms/qemu-arm64/config/demo.toml");
const TICKER: &str = include_str!("../../../../platforms/qemu-arm64/config/ticker.toml");
/// Two CPUs (one of them the ticker's), a line, 1 MiB of the big RAM region, a
/// communication region.
const PAIR: &str = include_str!("../../tests/data/pair.toml");

const FRAME_COUNT: usize = 256;
const CONTROL: u64 = INTERFACE.control;
const DATA: u64 = INTERFACE.data;
const DATA_SIZE: u64 = INTERFACE.data_size;
const PAGE: u64 = 0x1000;
/// Operations per input.
const MAX_OPERATIONS: usize = 48;

/// What must be as after boot once every cell is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Books {
    frames_in_use: usize,
    root_table_pages: usize,
    owners: Vec<u32>,
    root_cpus: u64,
    root_memory: u64,
    cells: usize,
}

struct Machine {
    hv: &'static Hypervisor<FakeArch>,
    system: &'static SystemConfigView<'static>,
    /// Demo, ticker, pair.
    stock: [CellConfig; 3],
    boot: Books,
}

fn machine() -> &'static Machine {
    static MACHINE: OnceLock<Machine> = OnceLock::new();
    MACHINE.get_or_init(boot)
}

fn boot() -> Machine {
    let bytes = system_from_toml(SYSTEM).unwrap().encode().unwrap();
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let system: &'static SystemConfigView<'static> =
        Box::leak(Box::new(SystemConfigView::parse(bytes).unwrap()));
    let hv: &'static Hypervisor<FakeArch> = Box::leak(Box::new(Hypervisor::new(FakeArch::new())));
    cellvisor_core::fake::boot(
        hv,
        system,
        PhysAddr::new(FRAMES),
        FRAME_COUNT,
        CPUS,
        INTERFACE,
    )
    .unwrap();
    for cpu in 1..CPUS {
        std::thread::spawn(move || run_cpu(hv, cpu));
    }
    while !(1..CPUS).all(|cpu| hv.is_parked(cpu)) {
        std::thread::yield_now();
    }
    let stock = [DEMO, TICKER, PAIR].map(|toml| cell_from_toml(toml).unwrap());
    let mut machine = Machine {
        hv,
        system,
        stock,
        boot: Books {
            frames_in_use: 0,
            root_table_pages: 0,
            owners: Vec::new(),
            root_cpus: 0,
            root_memory: 0,
            cells: 0,
        },
    };
    machine.boot = machine.books();
    machine
}

impl Machine {
    fn store(&self, offset: usize, value: u64) {
        self.hv.mgmt_access(0, CONTROL + offset as u64, true, value);
    }

    fn load(&self, offset: usize) -> u64 {
        self.hv
            .mgmt_access(0, CONTROL + offset as u64, false, 0)
            .expect("the control page answers a load")
    }

    fn put(&self, at: u64, bytes: &[u8]) {
        self.hv.arch().phys().write(DATA + at, bytes);
    }

    fn window(&self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.hv.arch().phys().read(DATA, &mut bytes);
        bytes
    }

    /// The status after a command word: a result, or a known error with a message.
    fn status(&self) -> i64 {
        let status = self.load(mgmt::STATUS) as i64;
        match Error::from_status(status) {
            None => {}
            Some(Ok(_)) => {
                let message = self.window(256);
                let end = message.iter().position(|&b| b == 0);
                let end = end.expect("a failure message ends within 256 bytes");
                assert!(end > 0, "a failure without a message (status {status})");
                assert!(
                    std::str::from_utf8(&message[..end]).is_ok(),
                    "a failure message is not UTF-8"
                );
            }
            Some(Err(status)) => panic!("status {status} is neither a result nor an error"),
        }
        status
    }

    /// Runs command word `word` with `args`.
    fn command(&self, word: u64, args: [u64; 4]) -> i64 {
        for (i, arg) in args.into_iter().enumerate() {
            self.store(mgmt::ARG0 + 8 * i, arg);
        }
        self.store(mgmt::COMMAND, word);
        self.status()
    }

    fn run(&self, command: Command, args: [u64; 4]) -> std::result::Result<i64, Error> {
        let status = self.command(command as u64, args);
        match Error::from_status(status) {
            Some(Ok(error)) => Err(error),
            _ => Ok(status),
        }
    }

    fn list(&self) -> Vec<CellRecord> {
        let count = self.run(Command::CellList, [0; 4]).expect("cell list") as usize;
        let size = core::mem::size_of::<CellRecord>();
        self.window(count * size)
            .chunks(size)
            .map(|c| CellRecord::read_from_bytes(c).unwrap())
            .collect()
    }

    fn books(&self) -> Books {
        let list = self.list();
        Books {
            frames_in_use: self.hv.frame_usage().0,
            root_table_pages: self.hv.table_pages(CellId(0)),
            owners: (0..CPUS).map(|cpu| self.hv.owner(cpu).0).collect(),
            root_cpus: self.hv.cell(CellId(0)).cpus(),
            root_memory: list[0].memory.get(),
            cells: list.len(),
        }
    }

    /// The books after an operation.
    fn check(&self) {
        let hv = self.hv;
        for cpu in 0..CPUS {
            let owner = hv.owner(cpu);
            for id in 0..MAX_CELLS as u32 {
                let has = hv.cell(CellId(id)).cpus() & 1 << cpu != 0;
                assert_eq!(
                    has,
                    id == owner.0,
                    "CPU {cpu} belongs to cell {}, cell {id} has CPUs {:#x}",
                    owner.0,
                    hv.cell(CellId(id)).cpus()
                );
            }
        }
        for id in 1..MAX_CELLS as u32 {
            let cell = hv.cell(CellId(id));
            assert_eq!(
                cell.state() != 0,
                cell.tables() != 0,
                "cell {id} has state {} and tables at {:#x}",
                cell.state(),
                cell.tables()
            );
        }
        let records = self.list();
        let listed: Vec<u32> = records.iter().map(|r| r.id.get()).collect();
        let alive: Vec<u32> = (0..MAX_CELLS as u32)
            .filter(|&id| hv.cell(CellId(id)).state() != 0)
            .collect();
        assert_eq!(listed, alive, "cells listed and cells with a state differ");
        for record in &records {
            assert_eq!(
                record.cpus.get(),
                hv.cell(CellId(record.id.get())).cpus(),
                "the books and the CPUs of cell {} differ",
                record.id.get()
            );
        }
    }

    /// Every CPU answers, every cell is destroyed: the machine is as after boot.
    fn tear_down(&self) {
        let arch = self.hv.arch();
        for cpu in 1..CPUS {
            arch.set_deaf(cpu, false);
        }
        arch.fail_irq_moves(u32::MAX);
        for record in self.list().iter().skip(1) {
            let id = u64::from(record.id.get());
            let mut attempts = 0;
            loop {
                match self.run(Command::CellDestroy, [id, 0, 0, 0]) {
                    // Out of memory: destroyed, but a step failed (the books say more).
                    Ok(_) | Err(Error::OutOfMemory) => break,
                    Err(Error::Denied) if attempts < 20 => attempts += 1,
                    Err(error) => panic!("destroying cell {id} at the end: {error:?}"),
                }
            }
        }
        for cpu in 1..CPUS {
            let start = Instant::now();
            while !self.hv.is_parked(cpu) {
                assert!(
                    start.elapsed() < Duration::from_secs(2),
                    "CPU {cpu} does not park"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(self.hv.cpu(cpu).power.state(), PowerState::Off);
        }
        assert_eq!(self.books(), self.boot, "not as after boot");
        // What the next input finds: the fake's log of machine calls would grow from input
        // to input, and so would what loads left in memory the root cell shares with cells
        // (nothing clears it on destroy). The fake holds only the table frames and the data
        // window then.
        arch.take_events();
        for region in self.system.root_cell().memory_regions() {
            arch.phys().zero(region.phys_start, region.size);
        }
        let limit = FRAME_COUNT + (DATA_SIZE / PAGE) as usize;
        assert!(
            arch.phys().pages() <= limit,
            "fake memory outside the root cell's"
        );
    }
}

/// A cell id: mostly one that may exist.
fn cell(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=9)? {
        0..=6 => u.int_in_range(1..=3)?,
        7 => 0,
        8 => u.int_in_range(4..=8)?,
        _ => u.arbitrary()?,
    })
}

const NAMES: [&str; 7] = [
    "demo", "ticker", "pair", "a", "b.c-d_e", "linux", "bad name",
];

/// A cell configuration from the fuzzer's choices: its regions mostly out of the root
/// cell's, its CPUs, lines and console mostly the machine's.
fn generated(u: &mut Unstructured<'_>, m: &Machine) -> Result<CellConfig> {
    let mut config = m.stock[u.int_in_range(0..=2)?].clone();
    let cell = &mut config.cell;
    cell.name = NAMES[u.int_in_range(0..=NAMES.len() - 1)?].into();
    let cpus: u8 = u.arbitrary()?;
    cell.cpus = CpuSet::from_cpus((0..5).filter(|c| cpus & 1 << c != 0));
    cell.irqs.clear();
    for _ in 0..u.int_in_range(0..=2)? {
        cell.irqs.push(IrqRange {
            first: u.int_in_range(16..=300)?,
            count: u.int_in_range(1..=8)?,
        });
    }
    if u.ratio(1, 4)? {
        cell.console = None;
    }
    let root: Vec<MemoryRegion> = m.system.root_cell().memory_regions().collect();
    cell.memory_regions.clear();
    let mut virt = 0u64;
    for _ in 0..u.int_in_range(0..=5)? {
        if u.ratio(1, 6)? {
            cell.memory_regions.push(MemoryRegion {
                phys_start: 0,
                virt_start: u.int_in_range(0..=0xffff_ffffu64)? & !(PAGE - 1),
                size: PAGE,
                flags: MemoryFlags::READ | MemoryFlags::WRITE | MemoryFlags::COMM_REGION,
            });
            continue;
        }
        let (base, pages, flags) = match root.get(u.int_in_range(0..=root.len())?) {
            Some(r) => (r.phys_start, r.size / PAGE, r.flags),
            // Not the root cell's: the hypervisor's own memory.
            None => (0x4020_0000, 0x800, MemoryFlags::READ | MemoryFlags::WRITE),
        };
        let first = u.int_in_range(0..=pages - 1)?;
        let count = u.int_in_range(1..=pages.min(0x1_0000))?;
        let count = if u.ratio(7, 8)? {
            count.min(pages - first)
        } else {
            count
        };
        let extra = MemoryFlags::from_bits_truncate(u64::from(u.arbitrary::<u8>()?))
            & !(MemoryFlags::IO | MemoryFlags::COMM_REGION);
        let size = count * PAGE;
        let phys = base + first * PAGE;
        let virt_start = match u.int_in_range(0..=3)? {
            0 => phys,
            1 => u.int_in_range(0..=0xff_ffffu64)? * PAGE,
            _ => virt,
        };
        virt = virt_start.saturating_add(size);
        cell.memory_regions.push(MemoryRegion {
            phys_start: phys,
            virt_start,
            size,
            flags: (flags & !MemoryFlags::COMM_REGION) | extra,
        });
    }
    cell.cpu_reset_address = match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        _ => u.int_in_range(0..=0x10_0000u64)? & !3,
    };
    Ok(config)
}

/// A configuration in the data window; returns `ARG0`.
fn configuration(u: &mut Unstructured<'_>, m: &Machine) -> Result<u64> {
    let mut bytes = match u.int_in_range(0..=3)? {
        0 => m.stock[u.int_in_range(0..=2)?].encode().unwrap_or_default(),
        1 => generated(u, m)?.encode().unwrap_or_default(),
        2 => {
            let mut bytes = if u.arbitrary()? {
                m.stock[u.int_in_range(0..=2)?].encode().unwrap_or_default()
            } else {
                generated(u, m)?.encode().unwrap_or_default()
            };
            for _ in 0..u.int_in_range(1..=4)? {
                if !bytes.is_empty() {
                    let at = u.int_in_range(0..=bytes.len() - 1)?;
                    bytes[at] ^= u.int_in_range(1..=255)?;
                }
            }
            if u.arbitrary()? {
                layout::seal(&mut bytes, layout::KIND_CELL, layout::ARCH_AARCH64);
            }
            bytes
        }
        _ => {
            let len = u.int_in_range(0..=1024)?;
            let mut bytes = u.bytes(len)?.to_vec();
            if u.arbitrary()? {
                layout::seal(&mut bytes, layout::KIND_CELL, layout::ARCH_AARCH64);
            }
            bytes
        }
    };
    let len = match u.int_in_range(0..=7)? {
        0 => u.arbitrary()?,
        1 => u.int_in_range(0..=bytes.len() as u64 + 64)?,
        _ => bytes.len() as u64,
    };
    // What the window holds after the configuration: zeros (or what was there before, for
    // a length beyond the configuration).
    bytes.resize(bytes.len() + 64, 0);
    m.put(0, &bytes);
    Ok(len)
}

fn launch(u: &mut Unstructured<'_>, m: &Machine) -> Result<()> {
    let len = configuration(u, m)?;
    if let Ok(id) = m.run(Command::CellCreate, [len, 0, 0, 0]) {
        m.put(0x1000, &[0x14, 0, 0, 0]);
        let _ = m.run(Command::CellLoad, [id as u64, 0, 4, 0x1000]);
        let _ = m.run(Command::CellStart, [id as u64, 0, 0, 0]);
    }
    Ok(())
}

fn operation(u: &mut Unstructured<'_>, m: &Machine, deaf: &mut Deaf) -> Result<()> {
    let hv = m.hv;
    let arch = hv.arch();
    match u.int_in_range(0..=19)? {
        0 | 1 => {
            let len = configuration(u, m)?;
            let _ = m.run(Command::CellCreate, [len, 0, 0, 0]);
        }
        2 | 3 => launch(u, m)?,
        4 => {
            let id = cell(u)?;
            let address = match u.int_in_range(0..=3)? {
                0 => u.arbitrary()?,
                _ => u.int_in_range(0..=0x100_0000)?,
            };
            let len = match u.int_in_range(0..=3)? {
                0 => u.arbitrary()?,
                1 => u.int_in_range(0..=DATA_SIZE + 1)?,
                _ => u.int_in_range(0..=0x2000)?,
            };
            let at = match u.int_in_range(0..=3)? {
                0 => u.arbitrary()?,
                _ => u.int_in_range(0..=DATA_SIZE)?,
            };
            if at < DATA_SIZE {
                let len = u.int_in_range(0..=256)?;
                let bytes = u.bytes(len)?;
                let fit = bytes.len().min((DATA_SIZE - at) as usize);
                m.put(at, &bytes[..fit]);
            }
            let _ = m.run(Command::CellLoad, [id, address, len, at]);
        }
        5 => {
            let _ = m.run(Command::CellStart, [cell(u)?, 0, 0, 0]);
        }
        6 | 7 => {
            let timeout = match u.int_in_range(0..=7)? {
                0 => u.arbitrary()?,
                _ => u.int_in_range(0..=3)?,
            };
            if let Ok(status) = m.run(Command::CellShutdown, [cell(u)?, timeout, 0, 0]) {
                assert!(status <= 1, "shutdown returned {status}");
            }
        }
        8 | 9 => {
            let id = CellId(u.int_in_range(0..=4)?);
            let (at, value) = match u.int_in_range(0..=5)? {
                0 => (offset::REPLY_FROM_CELL, comm::REPLY_APPROVED),
                1 => (offset::REPLY_FROM_CELL, comm::REPLY_DENIED),
                2 => (offset::LOCK, u.int_in_range(0..=1)?),
                3 => (offset::REPLY_FROM_CELL, u.arbitrary()?),
                _ => (u.int_in_range(0..=PAGE as usize)?, u.arbitrary()?),
            };
            hv.comm_write(id, at, value);
        }
        10 => {
            let _ = m.run(Command::CellDestroy, [cell(u)?, 0, 0, 0]);
        }
        11 => match u.int_in_range(0..=2)? {
            0 => {
                m.list();
            }
            1 => {
                let len = m.run(Command::Info, [0; 4]).expect("info") as usize;
                let info = HypervisorInfo::read_from_bytes(&m.window(len)).unwrap();
                assert!(info.memory_free.get() <= info.memory_total.get());
                assert_eq!(info.cells.get() as usize, m.list().len());
            }
            _ => {
                if let Ok(count) = m.run(Command::CellStats, [cell(u)?, 0, 0, 0]) {
                    assert!(count as usize <= CPUS);
                }
            }
        },
        12 => {
            let head = hv.ring().head();
            let position = match u.int_in_range(0..=3)? {
                0 => u.arbitrary()?,
                1 => head + u.int_in_range(0..=2)?,
                _ => head.saturating_sub(u.int_in_range(0..=0x1_0000)?),
            };
            if let Ok(copied) = m.run(Command::ConsoleRead, [position, 0, 0, 0]) {
                assert!(copied as u64 <= DATA_SIZE);
            }
        }
        13 => {
            // Any command word with any arguments.
            let word = match u.int_in_range(0..=3)? {
                0 => u.arbitrary()?,
                _ => u.int_in_range(0..=12)?,
            };
            let args = [
                u.arbitrary()?,
                u.arbitrary()?,
                u.arbitrary()?,
                u.arbitrary()?,
            ];
            let status = m.command(word, args);
            if Command::from_raw(word as u32).is_none() {
                assert_eq!(status, Error::UnknownCommand.status());
            }
        }
        14 => {
            // Any access at any offset of the control page, or outside it.
            let at = match u.int_in_range(0..=3)? {
                0 => u.arbitrary()?,
                _ => u.int_in_range(0..=PAGE + 8)?,
            };
            let write: bool = u.arbitrary()?;
            let value: u64 = u.arbitrary()?;
            let ipa = CONTROL.wrapping_add(at);
            let read = hv.mgmt_access(0, ipa, write, value);
            if write {
                assert_eq!(read, None);
                if hv.mgmt_contains(ipa) && at == mgmt::COMMAND as u64 {
                    m.status();
                }
            } else if hv.mgmt_contains(ipa) {
                let read = read.expect("the control page answers a load");
                match at as usize {
                    mgmt::MAGIC => assert_eq!(read, u64::from(mgmt::MAGIC_VALUE)),
                    mgmt::VERSION => assert_eq!(read, u64::from(mgmt::VERSION_VALUE)),
                    mgmt::DATA_SIZE => assert_eq!(read, DATA_SIZE),
                    mgmt::STATUS => {
                        m.status();
                    }
                    _ => {}
                }
            } else {
                // The architecture asks `mgmt_contains` first; past the page, no register.
                assert!(
                    matches!(read, None | Some(0)),
                    "a load outside the control page at {ipa:#x} read {read:?}"
                );
            }
        }
        15 => {
            // Root userspace writes anything anywhere in the window.
            let at = u.int_in_range(0..=DATA_SIZE - 1)?;
            let len = u.int_in_range(0..=512)?;
            let bytes = u.bytes(len)?;
            let fit = bytes.len().min((DATA_SIZE - at) as usize);
            m.put(at, &bytes[..fit]);
        }
        16 => {
            let cpu = u.int_in_range(0..=CPUS - 1)?;
            if cpu == 0 {
                assert_eq!(hv.violation(0), Verdict::InjectAbort);
            } else if !hv.is_parked(cpu) {
                // Only a CPU that runs a cell (a flag on a parked CPU would wait for a
                // later input).
                arch.set_violation(cpu);
            }
        }
        17 => {
            if *deaf == Deaf::Never {
                arch.set_deaf(u.int_in_range(1..=CPUS - 1)?, true);
                *deaf = Deaf::Now;
            }
        }
        18 => {
            let line = match u.int_in_range(0..=4)? {
                0 => u32::MAX,
                1 => 40,
                2 => 41,
                _ => u.int_in_range(32..=300)?,
            };
            arch.fail_irq_moves(line);
        }
        _ => std::thread::sleep(Duration::from_millis(u.int_in_range(0..=2)?)),
    }
    Ok(())
}

/// A CPU that ignores stop requests, once per input: each stop it ignores costs 100 ms.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deaf {
    Never,
    /// Deaf from this operation to the end of the next.
    Now,
    Next,
    Done,
}

fn run(data: &[u8]) {
    let m = machine();
    let mut u = Unstructured::new(data);
    let mut deaf = Deaf::Never;
    for _ in 0..MAX_OPERATIONS {
        if u.is_empty() {
            break;
        }
        let result = operation(&mut u, m, &mut deaf);
        deaf = match deaf {
            Deaf::Now => Deaf::Next,
            Deaf::Next => {
                for cpu in 1..CPUS {
                    m.hv.arch().set_deaf(cpu, false);
                }
                Deaf::Done
            }
            other => other,
        };
        m.check();
        if result.is_err() {
            break;
        }
    }
    m.tear_down();
}

fuzz_target!(|data: &[u8]| run(data));
