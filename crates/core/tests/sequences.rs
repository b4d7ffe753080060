//! Random sequences of management operations on the fake machine: creates (stock, mutated,
//! truncated or random configurations), loads, starts, shutdowns with the cell voting or
//! holding its lock, destroys, lists, statistics, console reads, unknown commands, raw
//! accesses to any offset of the control page, and the machine misbehaving under them: a
//! cell that breaks the rules, a CPU that stops answering and answers again, an interrupt
//! line the controller refuses to move.
//!
//! Properties: nothing panics; every status is a result (>= 0) or a known error code with
//! a message; after every step each CPU's owner is the one cell whose CPUs include it and
//! `cell list` shows exactly the cells with a state; at the end, with every CPU answering
//! and every cell destroyed, the machine is as after boot and its secondary CPUs are parked
//! and off again.

mod common;

use cellvisor_abi::comm::{self, offset};
use cellvisor_abi::{mgmt, Command, Error};
use cellvisor_cell::CellId;
use cellvisor_config::layout;
use cellvisor_core::{PowerState, Verdict, MAX_CELLS};
use common::*;
use proptest::prelude::*;
use std::time::Duration;

/// A configuration that parses.
#[derive(Clone, Copy, Debug)]
enum Base {
    Demo,
    Ticker,
    Pair,
}

impl Base {
    fn bytes(self) -> Vec<u8> {
        cell_bytes(match self {
            Base::Demo => DEMO,
            Base::Ticker => TICKER,
            Base::Pair => PAIR,
        })
    }
}

/// What `cell create` finds in the data window, and its `ARG0`.
#[derive(Clone, Debug)]
enum Config {
    Valid(Base),
    /// Bytes changed (the header's size and checksum repaired or not).
    Mutated {
        base: Base,
        flips: Vec<(u64, u8)>,
        repair: bool,
    },
    /// `ARG0` is not the configuration's size.
    Length {
        base: Base,
        len: u64,
    },
    /// Random bytes (behind a repaired header or not).
    Bytes {
        bytes: Vec<u8>,
        repair: bool,
    },
}

impl Config {
    /// The window's bytes and `ARG0`.
    fn window(&self) -> (Vec<u8>, u64) {
        match self {
            Config::Valid(base) => {
                let bytes = base.bytes();
                let len = bytes.len() as u64;
                (bytes, len)
            }
            Config::Mutated {
                base,
                flips,
                repair: fix,
            } => {
                let mut bytes = base.bytes();
                for &(at, value) in flips {
                    // `at` is a fraction of the length (2^64: all of it).
                    let at = ((u128::from(at) * bytes.len() as u128) >> 64) as usize;
                    bytes[at] ^= value;
                }
                if *fix {
                    layout::seal(&mut bytes, layout::KIND_CELL, layout::ARCH_AARCH64);
                }
                let len = bytes.len() as u64;
                (bytes, len)
            }
            Config::Length { base, len } => (base.bytes(), *len),
            Config::Bytes { bytes, repair: fix } => {
                let mut bytes = bytes.clone();
                if *fix {
                    layout::seal(&mut bytes, layout::KIND_CELL, layout::ARCH_AARCH64);
                }
                let len = bytes.len() as u64;
                (bytes, len)
            }
        }
    }
}

/// What a cell writes into its communication region.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Approve,
    Deny,
    Lock,
    Unlock,
    Garbage(u32),
}

/// Where `console` reads from.
#[derive(Clone, Copy, Debug)]
enum Position {
    /// This many bytes before the end of the output so far.
    Back(u64),
    /// This many bytes after it.
    Beyond(u64),
    Any(u64),
}

#[derive(Clone, Debug)]
enum Step {
    Create(Config),
    Load {
        cell: u64,
        address: u64,
        len: u64,
        offset: u64,
    },
    Start(u64),
    /// Create, load four bytes at 0 and start (each may fail).
    Launch(Base),
    Shutdown {
        cell: u64,
        timeout_ms: u64,
    },
    /// The cell answers through its communication region.
    Reply {
        cell: u32,
        reply: Reply,
    },
    /// A shutdown request, the cell's answer, the shutdown again.
    Vote {
        cell: u32,
        timeout_ms: u64,
        reply: Reply,
    },
    Destroy(u64),
    List,
    Info,
    Stats(u64),
    Console(Position),
    /// A command word that is no command.
    Unknown(u64),
    /// A load or store at `offset` from the control page (below it too, wrapped).
    Raw {
        offset: u64,
        write: bool,
        value: u64,
    },
    Violation(usize),
    Deaf(usize),
    Hear(usize),
    /// The interrupt controller refuses to move this line from now on (`None`: no line).
    FailIrq(Option<u32>),
    Sleep(u64),
}

fn base() -> impl Strategy<Value = Base> {
    prop_oneof![Just(Base::Demo), Just(Base::Ticker), Just(Base::Pair)]
}

fn config() -> impl Strategy<Value = Config> {
    prop_oneof![
        4 => base().prop_map(Config::Valid),
        2 => (base(), prop::collection::vec((any::<u64>(), 1..=255u8), 1..=4), any::<bool>())
            .prop_map(|(base, flips, repair)| Config::Mutated { base, flips, repair }),
        1 => (base(), prop_oneof![0..=600u64, Just(DATA_SIZE), Just(DATA_SIZE + 1), any::<u64>()])
            .prop_map(|(base, len)| Config::Length { base, len }),
        1 => (prop::collection::vec(any::<u8>(), 0..=400), any::<bool>())
            .prop_map(|(bytes, repair)| Config::Bytes { bytes, repair }),
    ]
}

/// A cell id: mostly one that may exist.
fn cell() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1..=3u64, 2 => 0..=9u64, 1 => any::<u64>()]
}

fn cpu() -> impl Strategy<Value = usize> {
    0..CPUS
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        3 => Just(Reply::Approve),
        2 => Just(Reply::Deny),
        1 => Just(Reply::Lock),
        1 => Just(Reply::Unlock),
        1 => any::<u32>().prop_map(Reply::Garbage),
    ]
}

fn control_offset() -> impl Strategy<Value = u64> {
    let registers = [
        mgmt::MAGIC,
        mgmt::VERSION,
        mgmt::DATA_SIZE,
        mgmt::ARG0,
        mgmt::ARG1,
        mgmt::ARG2,
        mgmt::ARG3,
        mgmt::COMMAND,
        mgmt::STATUS,
    ]
    .map(|r| r as u64);
    prop_oneof![
        4 => prop::sample::select(registers.to_vec()),
        2 => 0..mgmt::PAGE_SIZE,
        1 => any::<u64>(),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => config().prop_map(Step::Create),
        3 => (
            cell(),
            prop_oneof![4 => 0..0x100_0000u64, 1 => any::<u64>()],
            prop_oneof![4 => 0..=0x1_0000u64, 1 => 0..=DATA_SIZE + 1, 1 => any::<u64>()],
            prop_oneof![4 => 0..=DATA_SIZE, 1 => any::<u64>()],
        )
            .prop_map(|(cell, address, len, offset)| Step::Load { cell, address, len, offset }),
        2 => cell().prop_map(Step::Start),
        4 => base().prop_map(Step::Launch),
        4 => (cell(), prop_oneof![0..=50u64, Just(cellvisor_abi::MAX_SHUTDOWN_TIMEOUT_MS + 1)])
            .prop_map(|(cell, timeout_ms)| Step::Shutdown { cell, timeout_ms }),
        2 => (1..=3u32, reply()).prop_map(|(cell, reply)| Step::Reply { cell, reply }),
        3 => (1..=3u32, 0..=50u64, reply())
            .prop_map(|(cell, timeout_ms, reply)| Step::Vote { cell, timeout_ms, reply }),
        2 => cell().prop_map(Step::Destroy),
        1 => Just(Step::List),
        1 => Just(Step::Info),
        1 => cell().prop_map(Step::Stats),
        1 => prop_oneof![
            (0..=200u64).prop_map(Position::Back),
            (0..=2u64).prop_map(Position::Beyond),
            any::<u64>().prop_map(Position::Any),
        ]
        .prop_map(Step::Console),
        1 => prop_oneof![Just(0u64), 10..=64u64, any::<u64>()].prop_map(Step::Unknown),
        3 => (control_offset(), any::<bool>(), prop_oneof![0..=16u64, any::<u64>()])
            .prop_map(|(offset, write, value)| Step::Raw { offset, write, value }),
        2 => cpu().prop_map(Step::Violation),
        1 => (1..CPUS).prop_map(Step::Deaf),
        2 => (1..CPUS).prop_map(Step::Hear),
        1 => prop_oneof![Just(None), Just(Some(40)), Just(Some(41)), (32..288u32).prop_map(Some)]
            .prop_map(Step::FailIrq),
        1 => (0..=20u64).prop_map(Step::Sleep),
    ]
}

/// Runs a command: every status is a result or a known error with a message (the helper
/// panics on an unknown code).
fn run(m: &Machine<'_>, command: Command, args: [u64; 4]) -> Result<i64, Error> {
    let result = m.command(command, args);
    note(format!("{command:?} {args:x?}: {result:?}"));
    result.map_err(|(error, message)| {
        assert!(
            !message.is_empty(),
            "{command:?} failed with {error:?} and no message"
        );
        error
    })
}

std::thread_local! {
    /// What the commands of the running case returned, for failure messages.
    static LOG: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn note(line: String) {
    LOG.with(|log| log.borrow_mut().push(line));
}

/// The commands so far, one a line.
fn history() -> String {
    LOG.with(|log| log.borrow().join("\n"))
}

/// The status register after a command word: a result or a known error.
fn status(m: &Machine<'_>) -> i64 {
    let status =
        m.hv.mgmt_access(0, CONTROL + mgmt::STATUS as u64, false, 0)
            .expect("the control page answers") as i64;
    assert!(
        !matches!(Error::from_status(status), Some(Err(_))),
        "status {status} is neither a result nor an error code"
    );
    status
}

fn apply(m: &Machine<'_>, step: &Step) {
    let hv = m.hv;
    let arch = hv.arch();
    match *step {
        Step::Create(ref config) => {
            let (bytes, len) = config.window();
            m.put(0, &bytes);
            let _ = run(m, Command::CellCreate, [len, 0, 0, 0]);
        }
        Step::Load {
            cell,
            address,
            len,
            offset,
        } => {
            let _ = run(m, Command::CellLoad, [cell, address, len, offset]);
        }
        Step::Start(cell) => {
            let _ = run(m, Command::CellStart, [cell, 0, 0, 0]);
        }
        Step::Launch(base) => {
            let bytes = base.bytes();
            m.put(0, &bytes);
            if let Ok(id) = run(m, Command::CellCreate, [bytes.len() as u64, 0, 0, 0]) {
                m.put(0x1000, &[0x14, 0, 0, 0]);
                let _ = run(m, Command::CellLoad, [id as u64, 0, 4, 0x1000]);
                let _ = run(m, Command::CellStart, [id as u64, 0, 0, 0]);
            }
        }
        Step::Shutdown { cell, timeout_ms } => {
            if let Ok(status) = run(m, Command::CellShutdown, [cell, timeout_ms, 0, 0]) {
                assert!(status <= 1, "shutdown returned {status}");
            }
        }
        Step::Reply { cell, reply } => answer(m, cell, reply),
        Step::Vote {
            cell,
            timeout_ms,
            reply,
        } => {
            for answering in [true, false] {
                let args = [u64::from(cell), timeout_ms, 0, 0];
                if let Ok(status) = run(m, Command::CellShutdown, args) {
                    assert!(status <= 1, "shutdown returned {status}");
                }
                if answering {
                    answer(m, cell, reply);
                }
            }
        }
        Step::Destroy(cell) => {
            let _ = run(m, Command::CellDestroy, [cell, 0, 0, 0]);
        }
        Step::List => {
            m.list();
        }
        Step::Info => {
            let info = m.info();
            assert!(info.memory_free.get() <= info.memory_total.get());
        }
        Step::Stats(cell) => {
            if let Ok(count) = run(m, Command::CellStats, [cell, 0, 0, 0]) {
                assert!(count as usize <= CPUS);
            }
        }
        Step::Console(position) => {
            let head = hv.ring().head();
            let position = match position {
                Position::Back(back) => head.saturating_sub(back),
                Position::Beyond(beyond) => head + beyond,
                Position::Any(any) => any,
            };
            if let Ok(copied) = run(m, Command::ConsoleRead, [position, 0, 0, 0]) {
                assert!(copied as u64 <= DATA_SIZE);
            }
        }
        Step::Unknown(word) => {
            hv.mgmt_access(0, CONTROL + mgmt::COMMAND as u64, true, word);
            let status = status(m);
            if Command::from_raw(word as u32).is_none() {
                assert_eq!(
                    status,
                    Error::UnknownCommand.status(),
                    "command word {word:#x}"
                );
            }
        }
        Step::Raw {
            offset,
            write,
            value,
        } => {
            let ipa = CONTROL.wrapping_add(offset);
            let read = hv.mgmt_access(0, ipa, write, value);
            let inside = hv.mgmt_contains(ipa);
            if write {
                assert_eq!(read, None);
                if inside && offset == mgmt::COMMAND as u64 {
                    status(m);
                }
            } else if inside {
                let read = read.expect("the control page answers a load");
                match offset as usize {
                    mgmt::MAGIC => assert_eq!(read, u64::from(mgmt::MAGIC_VALUE)),
                    mgmt::DATA_SIZE => assert_eq!(read, DATA_SIZE),
                    mgmt::STATUS => {
                        status(m);
                    }
                    _ => {}
                }
            }
        }
        Step::Violation(0) => assert_eq!(hv.violation(0), Verdict::InjectAbort),
        Step::Violation(cpu) => arch.set_violation(cpu),
        Step::Deaf(cpu) => arch.set_deaf(cpu, true),
        Step::Hear(cpu) => arch.set_deaf(cpu, false),
        Step::FailIrq(line) => arch.fail_irq_moves(line.unwrap_or(u32::MAX)),
        Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
    }
}

fn answer(m: &Machine<'_>, cell: u32, reply: Reply) {
    let (at, value) = match reply {
        Reply::Approve => (offset::REPLY_FROM_CELL, comm::REPLY_APPROVED),
        Reply::Deny => (offset::REPLY_FROM_CELL, comm::REPLY_DENIED),
        Reply::Lock => (offset::LOCK, 1),
        Reply::Unlock => (offset::LOCK, 0),
        Reply::Garbage(value) => (offset::REPLY_FROM_CELL, value),
    };
    m.hv.comm_write(CellId(cell), at, value);
}

/// The books after a step: each CPU belongs to exactly the cell its owner says, a cell slot
/// has tables exactly when it has a state, and `cell list` shows exactly the cells with a
/// state, with their CPUs.
fn check_books(m: &Machine<'_>, step: &Step) {
    let hv = m.hv;
    for cpu in 0..CPUS {
        let owner = hv.owner(cpu);
        for id in 0..MAX_CELLS as u32 {
            let has = hv.cell(CellId(id)).cpus() & 1 << cpu != 0;
            assert_eq!(
                has,
                id == owner.0,
                "after {step:?}: CPU {cpu} belongs to cell {}, cell {id} has CPUs {:#x}; \
                 commands:\n{}",
                owner.0,
                hv.cell(CellId(id)).cpus(),
                history()
            );
        }
    }
    for id in 1..MAX_CELLS as u32 {
        let cell = hv.cell(CellId(id));
        assert_eq!(
            cell.state() != 0,
            cell.tables() != 0,
            "after {step:?}: cell {id} has state {} and tables at {:#x}; commands:\n{}",
            cell.state(),
            cell.tables(),
            history()
        );
    }
    let records = m.list();
    let listed: Vec<u32> = records.iter().map(|r| r.id.get()).collect();
    let alive: Vec<u32> = (0..MAX_CELLS as u32)
        .filter(|&id| hv.cell(CellId(id)).state() != 0)
        .collect();
    assert_eq!(
        listed,
        alive,
        "after {step:?}: cells listed and cells with a state differ; commands:\n{}",
        history()
    );
    for record in &records {
        let cell = hv.cell(CellId(record.id.get()));
        assert_eq!(
            record.cpus.get(),
            cell.cpus(),
            "after {step:?}: the books and the CPUs of cell {} differ",
            record.id.get()
        );
    }
}

/// Every CPU answers again, every cell is destroyed: the machine is as after boot.
fn tear_down(m: &Machine<'_>, boot: &Snapshot) {
    let arch = m.hv.arch();
    for cpu in 1..CPUS {
        arch.set_deaf(cpu, false);
    }
    arch.fail_irq_moves(u32::MAX);
    let cells: Vec<u32> = m.list().iter().skip(1).map(|r| r.id.get()).collect();
    for id in cells {
        let mut attempts = 0;
        loop {
            match run(m, Command::CellDestroy, [u64::from(id), 0, 0, 0]) {
                Ok(_) => break,
                Err(Error::Denied) if attempts < 20 => attempts += 1,
                Err(error) => panic!(
                    "destroying cell {id} at the end: {error:?}; commands:\n{}",
                    history()
                ),
            }
        }
    }
    for cpu in 1..CPUS {
        assert!(
            m.wait_parked(cpu),
            "CPU {cpu} does not park; commands:\n{}",
            history()
        );
        assert_eq!(m.hv.cpu(cpu).power.state(), PowerState::Off, "CPU {cpu}");
    }
    assert_eq!(
        &m.snapshot(),
        boot,
        "not as after boot; commands:\n{}",
        history()
    );
}

fn sequence(steps: &[Step]) {
    LOG.with(|log| log.borrow_mut().clear());
    with_machine(256, |m| {
        let boot = m.snapshot();
        for step in steps {
            note(format!("{step:?}"));
            apply(m, step);
            check_books(m, step);
        }
        tear_down(m, &boot);
    });
}

fn config_cases() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(64),
        // Each case boots a machine with CPU threads and some steps wait for CPUs: keep
        // shrinking bounded.
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config_cases())]

    #[test]
    fn management_sequences(steps in prop::collection::vec(step(), 1..=24)) {
        sequence(&steps);
    }
}
