//! The management interface end to end on the fake architecture: create, load, start,
//! shutdown (approved, refused, timed out), destroy; a failure at every step, rolled back; a
//! cell stopped for a violation; a CPU that does not answer a stop.

mod common;

use cellvisor_abi::comm::{self, offset};
use cellvisor_abi::{CellState, Command, Error};
use cellvisor_cell::CellId;
use cellvisor_core::fake::Event;
use cellvisor_core::{PowerState, Verdict};
use common::*;

const FRAMES_PLENTY: usize = 256;

#[test]
fn a_cell_lives_and_dies_and_the_machine_is_as_before() {
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        let arch = m.hv.arch();
        arch.take_events();

        let id = m.create(DEMO).unwrap();
        assert_eq!(id, 1);
        assert_eq!(m.hv.owner(3), CellId(1), "CPU 3 went to the cell");
        assert_eq!(m.hv.cell(CellId(1)).cpus(), 1 << 3);
        assert_eq!(m.hv.cell(CellId(0)).cpus(), 0b0111);
        assert!(arch.take_events().contains(&Event::MoveIrqs {
            from: 0,
            to: 1,
            irqs: vec![40]
        }));
        assert!(m.hv.cell(CellId(1)).tables() != 0);
        assert!(arch.root_flushes() > 0, "the live root cell lost memory");
        // The root cell no longer maps the cell's RAM, but still the RAM around it.
        assert!(!m.hv.maps(CellId(0), 0x7f00_0000));
        assert!(!m.hv.maps(CellId(0), 0x7fff_efff));
        assert!(m.hv.maps(CellId(0), 0x7eff_ffff));
        assert!(m.hv.maps(CellId(1), 0));
        assert_eq!(m.hv.ram_address(CellId(1), 0x1234), Some(0x7f00_1234));
        // The UART is mapped, but as device registers.
        assert!(m.hv.maps(CellId(1), 0x904_0000));
        assert_eq!(m.hv.ram_address(CellId(1), 0x904_0000), None);
        assert_eq!(m.hv.ram_address(CellId(1), 0xff_f000), None);
        assert!(!m.hv.maps(CellId(1), 0xff_f000));
        assert!(!m.hv.maps(CellId(7), 0));
        let created = m.snapshot();
        assert!(created.memory_free < before.memory_free);
        assert_eq!(created.root_memory, before.root_memory - 0xff_f000);

        // Load: the image lands in the cell's RAM (physical 0x7f00_0000 + offset).
        let image: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(m.load(id, 0x100, &image), Ok(0));
        let mut back = vec![0u8; image.len()];
        arch.phys().read(0x7f00_0100, &mut back);
        assert_eq!(back, image);
        assert_eq!(m.list()[1].state.get(), CellState::Loaded as u32);

        // Start: CPU 3 enters the cell at its reset address with its tables.
        assert_eq!(m.command(Command::CellStart, [1, 0, 0, 0]), Ok(0));
        assert!(m.wait_running(3));
        let tables = m.hv.cell(CellId(1)).tables();
        assert!(arch.take_events().contains(&Event::Activate {
            cpu: 3,
            cell: 1,
            tables
        }));
        assert_eq!(
            m.hv.comm_read(CellId(1), offset::CELL_STATE),
            Some(CellState::Running as u32)
        );
        let signature = [
            m.hv.comm_read(CellId(1), 0).unwrap().to_le_bytes(),
            m.hv.comm_read(CellId(1), 4).unwrap().to_le_bytes(),
        ];
        assert_eq!(signature.concat(), comm::SIGNATURE);
        assert!(
            arch.output().is_empty(),
            "nothing printed: {}",
            arch.output()
        );

        // Shutdown: the request goes to the cell, which approves.
        assert_eq!(m.command(Command::CellShutdown, [1, 1000, 0, 0]), Ok(1));
        assert_eq!(
            m.hv.comm_read(CellId(1), offset::MSG_TO_CELL),
            Some(comm::MSG_SHUTDOWN_REQUEST)
        );
        assert_eq!(
            m.command(Command::CellShutdown, [1, 1000, 0, 0]),
            Ok(1),
            "no answer yet"
        );
        m.hv.comm_write(CellId(1), offset::REPLY_FROM_CELL, comm::REPLY_APPROVED);
        assert_eq!(m.command(Command::CellShutdown, [1, 1000, 0, 0]), Ok(0));
        assert!(m.hv.is_parked(3));
        assert_eq!(m.list()[1].state.get(), CellState::ShutDown as u32);

        // Destroy: everything back, the cell's RAM zeroed, its tag flushed.
        arch.phys().write(0x7f00_0000, b"secret");
        assert_eq!(m.command(Command::CellDestroy, [1, 0, 0, 0]), Ok(0));
        assert!(arch.phys().is_zero(0x7f00_0000, 0xff_f000));
        assert!(arch.take_events().contains(&Event::FlushCell(1)));
        assert_eq!(m.snapshot(), before);
        assert_eq!(m.hv.cell(CellId(1)).tables(), 0);

        // The ring tells the story.
        let ring = ring_text(m);
        for line in [
            "cell \"demo\" created (id 1, CPUs 0x8)",
            "cell \"demo\" started",
            "cell \"demo\" shut down",
            "cell \"demo\" destroyed",
        ] {
            assert!(ring.contains(line), "{line:?} not in {ring:?}");
        }
    });
}

fn ring_text(m: &Machine<'_>) -> String {
    let copied = m.command(Command::ConsoleRead, [0; 4]).unwrap() as usize;
    let mut bytes = vec![0u8; copied];
    m.hv.arch().phys().read(DATA, &mut bytes);
    String::from_utf8(bytes).unwrap()
}

fn started(m: &Machine<'_>, toml: &str) -> i64 {
    let id = m.create(toml).unwrap();
    m.load(id, 0, &[0x14, 0, 0, 0]).unwrap();
    assert_eq!(m.command(Command::CellStart, [id as u64, 0, 0, 0]), Ok(0));
    id
}

#[test]
fn shutdown_refused_by_the_cell_or_its_lock_and_timed_out() {
    with_machine(FRAMES_PLENTY, |m| {
        let id = started(m, DEMO);
        let cell = CellId(id as u32);
        assert!(m.wait_running(3));
        // Refused by a vote.
        assert_eq!(
            m.command(Command::CellShutdown, [id as u64, 1000, 0, 0]),
            Ok(1)
        );
        m.hv.comm_write(cell, offset::REPLY_FROM_CELL, comm::REPLY_DENIED);
        let (error, message) = m
            .command(Command::CellShutdown, [id as u64, 1000, 0, 0])
            .unwrap_err();
        assert_eq!(error, Error::ShutdownRefused);
        assert_eq!(
            message,
            "cell \"demo\": the cell denied the shutdown request"
        );
        assert_eq!(
            m.hv.comm_read(cell, offset::MSG_TO_CELL),
            Some(comm::MSG_NONE)
        );
        assert!(
            !m.hv.is_parked(3),
            "a refused shutdown leaves the cell running"
        );
        // Refused by the lock.
        m.hv.comm_write(cell, offset::LOCK, 1);
        let (error, message) = m
            .command(Command::CellShutdown, [id as u64, 1000, 0, 0])
            .unwrap_err();
        assert_eq!(error, Error::ShutdownRefused);
        assert!(message.contains("holds its lock"), "{message}");
        m.hv.comm_write(cell, offset::LOCK, 0);
        // Too long a timeout.
        let (error, message) = m
            .command(Command::CellShutdown, [id as u64, u64::MAX, 0, 0])
            .unwrap_err();
        assert_eq!(error, Error::InvalidArgument);
        assert!(message.contains("longer than the longest"), "{message}");
        // Timed out: no answer within 20 ms, then stopped.
        assert_eq!(
            m.command(Command::CellShutdown, [id as u64, 20, 0, 0]),
            Ok(1)
        );
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(
            m.command(Command::CellShutdown, [id as u64, 20, 0, 0]),
            Ok(0)
        );
        assert!(m.hv.is_parked(3));
        assert_eq!(m.list()[1].state.get(), CellState::ShutDown as u32);
        // Shut down twice: nothing to do.
        assert_eq!(
            m.command(Command::CellShutdown, [id as u64, 20, 0, 0]),
            Ok(0)
        );
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
    });
}

#[test]
fn a_cell_that_breaks_the_rules_is_stopped_and_the_root_cell_gets_an_abort() {
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        let id = started(m, DEMO);
        assert!(m.wait_running(3));
        m.hv.arch().set_violation(3);
        assert!(m.wait_parked(3));
        assert_eq!(m.hv.cell(CellId(1)).state(), CellState::Failed as u32);
        assert_eq!(m.list()[1].state.get(), CellState::Failed as u32);
        // Failed cells do not start again without a reload.
        let (error, _) = m
            .command(Command::CellStart, [id as u64, 0, 0, 0])
            .unwrap_err();
        assert_eq!(error, Error::WrongState);
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
        assert_eq!(m.snapshot(), before);
        // The root cell is not stopped: it gets an abort.
        assert_eq!(m.hv.violation(0), Verdict::InjectAbort);
        assert_eq!(m.hv.cell(CellId(0)).state(), CellState::Running as u32);
    });
}

#[test]
fn a_cpu_that_does_not_stop_keeps_its_cell_until_it_does() {
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        let id = started(m, DEMO);
        assert!(m.wait_running(3));
        m.hv.arch().set_deaf(3, true);
        let (error, message) = m
            .command(Command::CellDestroy, [id as u64, 0, 0, 0])
            .unwrap_err();
        assert_eq!(error, Error::Denied);
        assert_eq!(message, "cell \"demo\": CPU 3 does not stop");
        assert_eq!(m.list().len(), 2, "the cell is still there");
        assert_eq!(m.hv.owner(3), CellId(1));
        m.hv.arch().set_deaf(3, false);
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
        assert_eq!(m.snapshot(), before);
    });
}

#[test]
fn bad_commands_change_nothing() {
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        let fails = |result: Result<i64, (Error, String)>, expected: Error, text: &str| {
            let (error, message) = result.unwrap_err();
            assert_eq!(error, expected, "{message}");
            assert!(message.contains(text), "{message:?} lacks {text:?}");
        };
        let unknown = {
            m.hv.mgmt_access(0, CONTROL + cellvisor_abi::mgmt::COMMAND as u64, true, 99);
            m.hv.mgmt_access(0, CONTROL + cellvisor_abi::mgmt::STATUS as u64, false, 0)
                .unwrap() as i64
        };
        assert_eq!(unknown, Error::UnknownCommand.status());
        // Configurations: empty, too long, garbage, a CPU the root cell runs.
        fails(
            m.command(Command::CellCreate, [0, 0, 0, 0]),
            Error::InvalidArgument,
            "0 bytes",
        );
        fails(
            m.command(Command::CellCreate, [DATA_SIZE + 1, 0, 0, 0]),
            Error::InvalidArgument,
            "at most",
        );
        m.put(0, &[0xff; 512]);
        fails(
            m.command(Command::CellCreate, [512, 0, 0, 0]),
            Error::BadConfig,
            "cell configuration",
        );
        fails(
            m.create(&DEMO.replace("cpus = [3]", "cpus = [0]")),
            Error::CpuBusy,
            "CPU 0",
        );
        // Commands on cells that do not exist or the root cell.
        fails(
            m.command(Command::CellStart, [7, 0, 0, 0]),
            Error::NoSuchCell,
            "no cell with id 7",
        );
        fails(
            m.command(Command::CellLoad, [u64::MAX, 0, 0, 0]),
            Error::NoSuchCell,
            "no cell",
        );
        fails(
            m.command(Command::CellStart, [0, 0, 0, 0]),
            Error::Denied,
            "runs already",
        );
        fails(
            m.command(Command::CellDestroy, [0, 0, 0, 0]),
            Error::Denied,
            "cannot be destroyed",
        );
        fails(
            m.command(Command::CellShutdown, [0, 0, 0, 0]),
            Error::Denied,
            "with the machine",
        );
        fails(
            m.command(Command::ConsoleRead, [u64::MAX, 0, 0, 0]),
            Error::InvalidArgument,
            "beyond the end",
        );
        assert_eq!(m.snapshot(), before);
        // A created cell: start before load, loads outside its memory or the window.
        let id = m.create(DEMO).unwrap() as u64;
        let created = m.snapshot();
        fails(
            m.command(Command::CellStart, [id, 0, 0, 0]),
            Error::WrongState,
            "start needs a loaded cell",
        );
        fails(
            m.load(id as i64, 0x100_0000, &[1; 16]),
            Error::InvalidArgument,
            "not in a loadable memory region",
        );
        fails(
            m.load(id as i64, 0xff_eff8, &[1; 16]),
            Error::ImageTooLarge,
            "",
        );
        fails(
            m.command(Command::CellLoad, [id, 0, 16, DATA_SIZE - 8]),
            Error::InvalidArgument,
            "exceed",
        );
        fails(
            m.command(Command::CellLoad, [id, 0, u64::MAX, 1]),
            Error::InvalidArgument,
            "exceed",
        );
        fails(m.create(DEMO), Error::CellExists, "demo");
        assert_eq!(m.snapshot(), created);
        assert_eq!(m.list()[1].state.get(), CellState::Created as u32);
        assert_eq!(m.command(Command::CellDestroy, [id, 0, 0, 0]), Ok(0));
        assert_eq!(m.snapshot(), before);
        // The root cell's CPU 2 online: the ticker cannot have it.
        m.hv.cpu(2).power.power_on(0x4000_0000, 0).unwrap();
        assert!(m.wait_running(2));
        assert_eq!(m.hv.cpu(2).power.state(), PowerState::On);
        fails(m.create(TICKER), Error::CpuBusy, "CPU 2");
        assert_eq!(m.snapshot(), before);
    });
}

#[test]
fn a_failure_at_every_step_of_create_is_rolled_back() {
    // Table frames: each limit from the root cell's own up to what the cell needs makes a
    // different step of create fail (tables, a region, the communication page).
    let (root_frames, enough) = with_machine(FRAMES_PLENTY, |m| {
        let free = m.snapshot().memory_free / 4096;
        m.create(DEMO).unwrap();
        let used = free - m.snapshot().memory_free / 4096;
        (FRAMES_PLENTY - free as usize, used as usize)
    });
    let mut failures = 0;
    for extra in 0..=enough {
        with_machine(root_frames + extra, |m| {
            let before = m.snapshot();
            match m.create(DEMO) {
                Ok(id) => {
                    assert_eq!(extra, enough, "created with {extra} of {enough} frames");
                    assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
                }
                Err((error, message)) => {
                    failures += 1;
                    assert_eq!(error, Error::OutOfMemory, "{message}");
                    assert!(message.contains("demo"), "{message}");
                }
            }
            assert_eq!(m.snapshot(), before, "with {extra} spare frames");
            assert!(m.hv.is_parked(3));
        });
    }
    assert_eq!(failures, enough, "every limit below the need fails");
    // The interrupt controller refuses the line: rolled back too.
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        m.hv.arch().fail_irq_moves(40);
        let (error, message) = m.create(DEMO).unwrap_err();
        assert!(
            message.contains("interrupt controller"),
            "{error:?}: {message}"
        );
        assert_eq!(m.snapshot(), before);
        m.hv.arch().fail_irq_moves(u32::MAX);
        assert_eq!(m.create(DEMO), Ok(1));
    });
}

#[test]
fn two_cells_at_once_and_their_statistics() {
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        let demo = started(m, DEMO);
        let ticker = started(m, TICKER);
        assert_eq!((demo, ticker), (1, 2));
        assert!(m.wait_running(2) && m.wait_running(3));
        let names: Vec<String> = m.list().iter().map(|r| r.name().to_string()).collect();
        assert_eq!(names, ["linux", "demo", "ticker"]);
        m.hv.count(3, cellvisor_core::TrapReason::Psci);
        let count = m
            .command(Command::CellStats, [demo as u64, 0, 0, 0])
            .unwrap();
        assert_eq!(count, 1, "one CPU");
        for id in [demo, ticker] {
            // No communication-region answer: the timeout stops them.
            assert_eq!(
                m.command(Command::CellShutdown, [id as u64, 0, 0, 0]),
                Ok(1)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        for id in [demo, ticker] {
            assert_eq!(
                m.command(Command::CellShutdown, [id as u64, 0, 0, 0]),
                Ok(0)
            );
            assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
        }
        assert_eq!(m.snapshot(), before);
    });
}

#[test]
fn the_root_cell_powers_its_cpus_on_within_its_executable_ram() {
    use cellvisor_core::{CpuOnError, PowerOnError};
    with_machine(FRAMES_PLENTY, |m| {
        let root = CellId(0);
        // Not executable RAM: the UART, an unmapped address; misaligned.
        for entry in [0x900_0000, 0x1000, 0x4000_0002] {
            assert_eq!(
                m.hv.power_on(root, 1, entry, 0, 4),
                Err(PowerOnError::InvalidAddress),
                "{entry:#x}"
            );
        }
        assert_eq!(m.hv.cpu(1).power.state(), PowerState::Off);
        assert_eq!(m.hv.power_on(root, 1, 0x4000_1000, 7, 4), Ok(()));
        assert!(m.wait_running(1));
        assert!(m.hv.arch().take_events().contains(&Event::Activate {
            cpu: 1,
            cell: 0,
            tables: m.hv.cell(root).tables()
        }));
        assert_eq!(m.hv.cpu(1).power.state(), PowerState::On);
        assert_eq!(
            m.hv.power_on(root, 1, 0x4000_1000, 7, 4),
            Err(PowerOnError::Busy(CpuOnError::AlreadyOn))
        );
        // A cell's CPU is not the root cell's to start, nor may a cell start one.
        let id = started(m, DEMO);
        assert_eq!(
            m.hv.power_on(root, 3, 0x4000_1000, 0, 4),
            Err(PowerOnError::Denied)
        );
        assert_eq!(
            m.hv.power_on(CellId(id as u32), 3, 0, 0, 4),
            Err(PowerOnError::Denied)
        );
        assert_eq!(
            m.hv.power_on(root, 99, 0x4000_1000, 0, 4),
            Err(PowerOnError::Denied)
        );
    });
}

#[test]
fn a_destroy_with_a_failed_step_still_forgets_the_cell() {
    // Regression (found by tests/sequences.rs): the registry forgets a cell whose destroy
    // fails at a step, but the cell's run-time state stayed, so the slot had a state and no
    // cell in the books.
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        let id = started(m, DEMO);
        assert!(m.wait_running(3));
        m.hv.arch().fail_irq_moves(40);
        let (error, message) = m
            .command(Command::CellDestroy, [id as u64, 0, 0, 0])
            .unwrap_err();
        assert_eq!(error, Error::OutOfMemory);
        assert!(message.contains("destroyed, but"), "{message}");
        assert_eq!(m.list().len(), 1, "the cell is gone from the books");
        assert_eq!(m.hv.cell(CellId(1)).state(), 0, "and from the runtime");
        assert_eq!(m.hv.cell(CellId(1)).name(), "");
        assert!(ring_text(m).contains("cell \"demo\" destroyed"));
        assert_eq!(m.snapshot(), before);
        m.hv.arch().fail_irq_moves(u32::MAX);
        assert_eq!(m.create(DEMO), Ok(1));
        assert_eq!(m.hv.cell(CellId(1)).state(), CellState::Created as u32);
    });
}

#[test]
fn a_cpu_still_entering_its_cell_is_stopped_before_the_cell_is_destroyed() {
    // Regression (found by tests/sequences.rs): a CPU woken by `cell start` stays marked
    // parked until it has entered the cell. A destroy in that moment saw it parked, did not
    // stop it and gave it back to the root cell, while it went on into the destroyed cell's
    // vCPU, on freed tables, never to park again.
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        let arch = m.hv.arch();
        arch.set_activation_delay(40);
        let id = m.create(DEMO).unwrap();
        m.load(id, 0, &[0x14, 0, 0, 0]).unwrap();
        arch.take_events();
        assert_eq!(m.command(Command::CellStart, [id as u64, 0, 0, 0]), Ok(0));
        // CPU 3 is in `activate` now, for 40 ms.
        let entering = |e: &Event| matches!(e, Event::Activate { cpu: 3, .. });
        while !arch.take_events().iter().any(entering) {
            std::thread::yield_now();
        }
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
        assert!(m.hv.is_parked(3), "CPU 3 runs after its cell was destroyed");
        arch.set_activation_delay(0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(m.hv.is_parked(3), "CPU 3 runs after its cell was destroyed");
        assert_eq!(m.snapshot(), before);
        // Destroyed right after the start, whether the CPU took it or not.
        let id = m.create(DEMO).unwrap();
        m.load(id, 0, &[0x14, 0, 0, 0]).unwrap();
        assert_eq!(m.command(Command::CellStart, [id as u64, 0, 0, 0]), Ok(0));
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(m.hv.is_parked(3), "CPU 3 runs after its cell was destroyed");
        assert_eq!(m.snapshot(), before);
    });
}

#[test]
fn a_create_waits_for_a_root_cpu_on_its_way_into_the_park_loop() {
    // On x86 the root cell's Linux reports a CPU offline a moment before its vCPU halts and
    // parks; a create in that moment waits for it instead of failing.
    with_machine(FRAMES_PLENTY, |m| {
        m.hv.cpu(3).power.power_on(0x4000_0000, 0).unwrap();
        assert!(m.wait_running(3));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                cellvisor_core::fake::FakeArch::set_cpu(1);
                std::thread::sleep(std::time::Duration::from_millis(20));
                // The vCPU switches itself off and parks.
                m.hv.stop_cpu(3);
                m.hv.cpu(3).power.power_off();
            });
            let id = m.create(DEMO).expect("the create waits for CPU 3 to park");
            assert!(m.hv.is_parked(3));
            assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
        });
    });
}

#[test]
fn a_root_cpu_on_racing_with_a_create_never_starts_the_cpu_in_the_wrong_cell() {
    // The root cell powers CPU 3 on and off again and again while cells that take CPU 3 are
    // created and destroyed: a CPU given to a cell must stay parked until the cell starts
    // (before, a CPU_ON between create's check that the CPU is off and the hand-over started
    // the root cell's vCPU on a CPU the new cell then owned).
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        let done = AtomicBool::new(false);
        let started = AtomicU32::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                cellvisor_core::fake::FakeArch::set_cpu(1);
                while !done.load(Ordering::SeqCst) {
                    if m.hv.power_on(CellId(0), 3, 0x4000_1000, 0, 4).is_ok() {
                        started.fetch_add(1, Ordering::SeqCst);
                        // The vCPU runs root code, then switches itself off.
                        while m.hv.is_parked(3)
                            && m.hv.owner(3) == CellId(0)
                            && !done.load(Ordering::SeqCst)
                        {
                            std::thread::yield_now();
                        }
                        m.hv.stop_cpu(3);
                        m.hv.cpu(3).power.power_off();
                        // Off for a while: a create may take it.
                        std::thread::sleep(std::time::Duration::from_micros(300));
                    }
                    std::thread::yield_now();
                }
            });
            let mut created = 0;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for _ in 0..300 {
                    match m.create(DEMO) {
                        Ok(id) => {
                            created += 1;
                            assert!(m.hv.is_parked(3), "CPU 3 runs before its cell started");
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            assert!(m.hv.is_parked(3), "CPU 3 started after it was given away");
                            assert_ne!(m.hv.cpu(3).power.state(), PowerState::On);
                            assert_eq!(
                                m.command(Command::CellDestroy, [id as u64, 0, 0, 0]),
                                Ok(0)
                            );
                        }
                        Err((error, message)) => {
                            assert_eq!(error, Error::CpuBusy, "{message}");
                        }
                    }
                }
            }));
            done.store(true, Ordering::SeqCst);
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
            assert!(created > 0, "no create got CPU 3");
        });
        assert!(started.load(Ordering::SeqCst) > 0, "no CPU_ON got through");
        // CPU 3 is the root cell's again, off and parked.
        while !m.hv.is_parked(3) {
            std::thread::yield_now();
        }
        assert_eq!(m.snapshot(), before);
    });
}

#[test]
fn a_cell_that_starts_on_its_first_cpu_powers_the_others_on_and_off() {
    // x86's way: the cell's start starts CPU 1 only; CPU 2 waits, off, for an INIT and a
    // start-up IPI from CPU 1, which the core's `init_cpu` and `power_on` are.
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        m.hv.arch().set_first_cpu_start(true);
        let id = m.create(PAIR).unwrap();
        // A stop request left on a parked CPU (here: asked while it waited) does not hold
        // back its start-up later (regression: the x86 AP never started).
        assert!(m.hv.stop_cpu(2));
        m.load(id, 0, &[0x14, 0, 0, 0]).unwrap();
        assert_eq!(m.command(Command::CellStart, [id as u64, 0, 0, 0]), Ok(0));
        let cell = CellId(id as u32);
        assert!(m.wait_running(1));
        assert_eq!(m.hv.cpu(1).power.state(), PowerState::On);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(m.hv.is_parked(2), "CPU 2 waits for its start-up");
        assert_eq!(m.hv.cpu(2).power.state(), PowerState::Off);

        // Only the cell, for its own CPUs, into its RAM.
        use cellvisor_core::PowerOnError;
        assert_eq!(
            m.hv.power_on(CellId::ROOT, 2, 0x4000_1000, 0, 0x1000),
            Err(PowerOnError::Denied)
        );
        assert_eq!(
            m.hv.power_on(cell, 3, 0x1000, 0, 0x1000),
            Err(PowerOnError::Denied)
        );
        assert_eq!(
            m.hv.power_on(cell, 2, 0x20_0000, 0, 0x1000),
            Err(PowerOnError::InvalidAddress),
            "beyond its 1 MiB"
        );
        assert_eq!(
            m.hv.power_on(cell, 2, 0x1800, 0, 0x1000),
            Err(PowerOnError::InvalidAddress),
            "not page aligned"
        );
        assert_eq!(m.hv.power_on(cell, 2, 0x8000, 0, 0x1000), Ok(()));
        assert!(m.wait_running(2));
        assert_eq!(m.hv.cpu(2).power.state(), PowerState::On);
        assert_eq!(
            m.hv.power_on(cell, 2, 0x8000, 0, 0x1000),
            Err(PowerOnError::Busy(cellvisor_core::CpuOnError::AlreadyOn)),
            "a start-up for a running CPU"
        );

        // INIT: CPU 2 stops, off, and starts again at the next start-up; the root cell
        // cannot INIT a cell's CPU this way.
        assert_eq!(m.hv.init_cpu(CellId::ROOT, 2), Err(PowerOnError::Denied));
        assert_eq!(m.hv.init_cpu(cell, 2), Ok(true));
        assert!(m.hv.is_parked(2));
        assert_eq!(m.hv.cpu(2).power.state(), PowerState::Off);
        assert_eq!(
            m.hv.init_cpu(cell, 2),
            Ok(true),
            "INIT of a CPU that is off"
        );
        assert_eq!(m.hv.power_on(cell, 2, 0x9000, 0, 0x1000), Ok(()));
        assert!(m.wait_running(2));

        // A stopped cell starts nothing; its CPUs go back off.
        assert_eq!(m.hv.init_cpu(cell, 2), Ok(true));
        m.hv.arch().set_violation(1);
        while !m.hv.is_parked(1) {
            std::thread::yield_now();
        }
        assert_eq!(
            m.hv.power_on(cell, 2, 0x8000, 0, 0x1000),
            Err(PowerOnError::Denied)
        );
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
        assert_eq!(m.snapshot(), before);
        for cpu in [1, 2] {
            assert_eq!(m.hv.cpu(cpu).power.state(), PowerState::Off);
        }
        // The root cell's CPU_ON works for them again.
        assert_eq!(m.hv.power_on(CellId::ROOT, 2, 0x4000_1000, 0, 4), Ok(()));
        assert!(m.wait_running(2));
    });
}

#[test]
fn a_cell_that_starts_on_every_cpu_cannot_power_its_cpus_on() {
    with_machine(FRAMES_PLENTY, |m| {
        let id = started(m, PAIR);
        assert!(m.wait_running(1) && m.wait_running(2));
        assert_eq!(
            m.hv.power_on(CellId(id as u32), 2, 0x8000, 0, 0x1000),
            Err(cellvisor_core::PowerOnError::Denied)
        );
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
    });
}

/// The vCPUs entered since the last look: CPU, entry point, argument, what started it.
fn entered(m: &Machine<'_>) -> Vec<(usize, u64, u64, cellvisor_core::StartedBy)> {
    m.hv.arch()
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Enter { cpu, entry } => Some((cpu, entry.pc, entry.arg, entry.by)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_start_on_the_boot_cpu_only_at_an_address_with_an_argument() {
    // Linux in a cell on Arm: the kernel's entry, the device tree's address in x0, the other
    // CPU off until the kernel's PSCI CPU_ON.
    use cellvisor_abi::start::{AT, BOOT_CPU_ONLY};
    with_machine(FRAMES_PLENTY, |m| {
        let id = m.create(PAIR).unwrap();
        m.load(id, 0, &[0x14, 0, 0, 0]).unwrap();
        let start = |flags: u64, entry: u64, arg: u64| {
            m.command(Command::CellStart, [id as u64, flags, entry, arg])
        };
        let (error, message) = start(1 << 5, 0, 0).unwrap_err();
        assert_eq!(error, Error::InvalidArgument);
        assert_eq!(message, "cell \"pair\": unknown start flags 0x20");
        let (error, message) = start(AT, 0x10_0000, 0).unwrap_err();
        assert_eq!(error, Error::InvalidArgument);
        assert_eq!(
            message,
            "cell \"pair\": start address 0x100000 is not in its RAM"
        );
        m.hv.arch().take_events();
        assert!(!m.hv.cell(CellId(id as u32)).stock_os());
        let flags = BOOT_CPU_ONLY | AT | cellvisor_abi::start::STOCK_OS;
        assert_eq!(start(flags, 0x4_0000, 0xf_f000), Ok(0));
        assert!(m.hv.cell(CellId(id as u32)).stock_os());
        assert!(m.wait_running(1));
        assert_eq!(
            entered(m),
            [(1, 0x4_0000, 0xf_f000, cellvisor_core::StartedBy::CellStart)]
        );
        assert!(m.hv.is_parked(2));
        // The kernel's CPU_ON for CPU 2, with its context.
        assert_eq!(m.hv.power_on(CellId(id as u32), 2, 0x8_0000, 7, 4), Ok(()));
        assert!(m.wait_running(2));
        assert_eq!(
            entered(m),
            [(2, 0x8_0000, 7, cellvisor_core::StartedBy::PowerOn)]
        );
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
    });
}

#[test]
fn a_reset_from_inside_restarts_the_cell_where_it_started() {
    // PSCI SYSTEM_RESET of a cell started on its boot CPU: every CPU stops, the boot CPU
    // enters again at the start address with the start argument, the other one is off for
    // a CPU_ON; the cell runs on and nothing else changes.
    use cellvisor_abi::start::{AT, BOOT_CPU_ONLY};
    with_machine(FRAMES_PLENTY, |m| {
        let before = m.snapshot();
        let id = m.create(PAIR).unwrap();
        let cell = CellId(id as u32);
        m.load(id, 0, &[0x14, 0, 0, 0]).unwrap();
        let start = [id as u64, BOOT_CPU_ONLY | AT, 0x4_0000, 0xf_f000];
        assert_eq!(m.command(Command::CellStart, start), Ok(0));
        assert!(m.wait_running(1));
        assert_eq!(m.hv.power_on(cell, 2, 0x8_0000, 7, 4), Ok(()));
        assert!(m.wait_running(2));
        entered(m);

        // The reset comes from the second CPU.
        m.hv.arch().set_reset(2);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut events = Vec::new();
        while !events
            .iter()
            .any(|e| matches!(e, Event::Enter { cpu: 1, .. }))
            && std::time::Instant::now() < deadline
        {
            events.extend(m.hv.arch().take_events());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(events.contains(&Event::Reset {
            cpu: 2,
            restart: cellvisor_core::Restart::Restarted
        }));
        let enters: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Enter { cpu, entry } => Some((*cpu, entry.pc, entry.arg, entry.by)),
                _ => None,
            })
            .collect();
        assert_eq!(
            enters,
            [(1, 0x4_0000, 0xf_f000, cellvisor_core::StartedBy::CellStart)]
        );
        assert!(m.wait_parked(2));
        assert_eq!(m.hv.cpu(1).power.state(), PowerState::On);
        assert_eq!(m.hv.cpu(2).power.state(), PowerState::Off);
        assert_eq!(m.list()[1].state.get(), CellState::Running as u32);
        // The restarted cell powers its second CPU on as before.
        assert_eq!(m.hv.power_on(cell, 2, 0x9_0000, 8, 4), Ok(()));
        assert!(m.wait_running(2));
        assert_eq!(
            entered(m),
            [(2, 0x9_0000, 8, cellvisor_core::StartedBy::PowerOn)]
        );

        // A reset of the root cell's CPU does nothing.
        assert_eq!(
            m.hv.restart_cell_from_inside(0),
            cellvisor_core::Restart::NotACell
        );
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
        assert_eq!(m.snapshot(), before);
    });
}

#[test]
fn a_reset_from_inside_of_a_cell_being_stopped_keeps_it_stopped() {
    with_machine(FRAMES_PLENTY, |m| {
        let id = started(m, PAIR);
        assert!(m.wait_running(1) && m.wait_running(2));
        // The cell stops itself (a violation on CPU 1); CPU 2's reset then finds it stopping.
        m.hv.arch().set_violation(1);
        assert!(m.wait_parked(1) && m.wait_parked(2));
        m.hv.arch().take_events();
        assert_eq!(
            m.hv.restart_cell_from_inside(2),
            cellvisor_core::Restart::Stopped
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(m.hv.is_parked(1) && m.hv.is_parked(2));
        assert!(!m
            .hv
            .arch()
            .take_events()
            .iter()
            .any(|e| matches!(e, Event::Enter { .. })));
        assert_eq!(m.list()[1].state.get(), CellState::Failed as u32);
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
    });
}

#[test]
fn a_reset_of_a_cell_that_cannot_restart_in_place_leaves_it_to_its_loader() {
    // A Linux kernel (`cellvisor cell linux`): its reset stops the cell (state reset), for
    // its loader to boot it again.
    use cellvisor_abi::start::{AT, BOOT_CPU_ONLY, NO_RESTART_IN_PLACE};
    with_machine(FRAMES_PLENTY, |m| {
        let id = m.create(PAIR).unwrap();
        m.load(id, 0, &[0x14, 0, 0, 0]).unwrap();
        let flags = BOOT_CPU_ONLY | AT | NO_RESTART_IN_PLACE;
        let start = [id as u64, flags, 0x4_0000, 0xf_f000];
        assert_eq!(m.command(Command::CellStart, start), Ok(0));
        assert!(m.wait_running(1));
        entered(m);
        m.hv.arch().set_reset(1);
        assert!(m.wait_parked(1));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(m.hv.is_parked(1) && m.hv.is_parked(2));
        let events = m.hv.arch().take_events();
        assert!(events.contains(&Event::Reset {
            cpu: 1,
            restart: cellvisor_core::Restart::ForLoader
        }));
        assert!(!events.iter().any(|e| matches!(e, Event::Enter { .. })));
        assert_eq!(m.list()[1].state.get(), CellState::Reset as u32);
        // Its loader loads and starts it again (`cellvisor cell linux --watch`).
        m.load(id, 0, &[0x14, 0, 0, 0]).unwrap();
        assert_eq!(m.command(Command::CellStart, start), Ok(0));
        assert!(m.wait_running(1));
        assert_eq!(
            entered(m),
            [(1, 0x4_0000, 0xf_f000, cellvisor_core::StartedBy::CellStart)]
        );
        assert_eq!(m.list()[1].state.get(), CellState::Running as u32);
        // Reset again: a shutdown then finds it stopped already.
        m.hv.arch().set_reset(1);
        assert!(m.wait_parked(1));
        while m.list()[1].state.get() != CellState::Reset as u32 {
            std::thread::yield_now();
        }
        assert_eq!(
            m.command(Command::CellShutdown, [id as u64, 0, 0, 0]),
            Ok(0)
        );
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
    });
}

#[test]
fn a_reset_with_a_cpu_that_does_not_stop_fails_the_cell_and_stops_the_others() {
    let trio = PAIR
        .replace("name = \"pair\"", "name = \"trio\"")
        .replace("cpus = [1, 2]", "cpus = [1, 2, 3]");
    with_machine(FRAMES_PLENTY, |m| {
        let id = started(m, &trio);
        assert!(m.wait_running(1) && m.wait_running(2) && m.wait_running(3));
        m.hv.arch().take_events();
        // CPU 2 ignores stop requests; CPU 1 resets the cell.
        m.hv.arch().set_deaf(2, true);
        m.hv.arch().set_reset(1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut events = Vec::new();
        while !events.iter().any(|e| matches!(e, Event::Reset { .. }))
            && std::time::Instant::now() < deadline
        {
            events.extend(m.hv.arch().take_events());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(events.contains(&Event::Reset {
            cpu: 1,
            restart: cellvisor_core::Restart::Stuck(2)
        }));
        // CPU 3 was asked too, after CPU 2 did not stop.
        assert!(m.wait_parked(1) && m.wait_parked(3));
        assert_eq!(m.list()[1].state.get(), CellState::Failed as u32);
        m.hv.arch().set_deaf(2, false);
        assert_eq!(m.command(Command::CellDestroy, [id as u64, 0, 0, 0]), Ok(0));
    });
}
