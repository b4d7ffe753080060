//! The debug console on the board's UART, through `cellvisor-console`.

use super::cells::MAX_CELLS;
use crate::board::{UartKind, MAX_CPUS};
use crate::budget::{Decision, OutputBudget};
use cellvisor_console::{
    emergency_write_fmt, CadenceUart, ConsoleUart, CrLfWriter, EmergencyWrite, MmioAddr,
    MmioRegion, Pl011, Uart,
};
use cellvisor_paging::PhysAddr;
use cellvisor_sync::Mutex;
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

/// The board's UART, for reports made before the console is installed: kind (0 none,
/// 1 PL011, 2 Cadence) in bits [1:0], base address above.
static EARLY_UART: AtomicU64 = AtomicU64::new(0);

/// The driver the console owns once installed.
struct Driver(UnsafeCell<Option<DriverKind>>);

enum DriverKind {
    Pl011(Pl011<MmioRegion>),
    Cadence(CadenceUart<MmioRegion>),
}

// SAFETY: written once by the boot CPU in `init`, before any other CPU runs; afterwards only
// reached through the console's lock.
unsafe impl Sync for Driver {}

static DRIVER: Driver = Driver(UnsafeCell::new(None));

/// Bytes of console output the root cell can read back (`cellvisor console`): the window
/// over which a cell's share of it is counted ([`crate::budget`]).
pub const RING_SIZE: usize = crate::budget::RING_WINDOW as usize;

/// Everything the console wrote, last [`RING_SIZE`] bytes. Bytes are written lock free (the
/// console lock orders ordinary output; fatal reports may interleave).
struct Ring {
    bytes: [AtomicU8; RING_SIZE],
    /// Total bytes ever written.
    head: AtomicU64,
}

static RING: Ring = Ring {
    bytes: [const { AtomicU8::new(0) }; RING_SIZE],
    head: AtomicU64::new(0),
};

/// Per CPU: this CPU's output under the console lock goes to the UART only, not into the
/// ring (a note over its cell's share, see [`note`]).
static RING_OFF: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Each cell slot's budget for notes.
static BUDGETS: Mutex<[OutputBudget; MAX_CELLS]> = Mutex::new([OutputBudget::new(); MAX_CELLS]);

/// Prints a note about something cell `cell` (named `name`) did while it goes on, within its
/// output budget ([`crate::budget`]): over the rate the note is dropped and counted, over the
/// cell's share of the ring it goes to the UART only.
pub fn note(cpu: usize, cell: u16, name: &str, args: core::fmt::Arguments<'_>) {
    let mut line = heapless::String::<320>::new();
    let _ = line.write_fmt(args);
    note_with(cpu, cell, name, line.len(), || {
        print(format_args!("{line}"))
    });
}

/// Like [`note`] for output `write` prints itself, about `len` bytes.
pub fn note_with(cpu: usize, cell: u16, name: &str, len: usize, write: impl FnOnce()) {
    let (now_ms, head) = (super::cells::millis(), ring_head());
    let decision = BUDGETS
        .lock()
        .get_mut(usize::from(cell))
        .map_or(Decision::Suppress, |budget| budget.admit(now_ms, head, len));
    let Decision::Print { ring, suppressed } = decision else {
        return;
    };
    let Some(off) = RING_OFF.get(cpu) else { return };
    off.store(!ring, Ordering::Relaxed);
    if suppressed > 0 {
        print(format_args!(
            "cellvisor: cell \"{name}\": {suppressed} more notes were suppressed (at most {} at once, then one per {} s)\n",
            crate::budget::BURST,
            crate::budget::REFILL_MS / 1000
        ));
    }
    write();
    off.store(false, Ordering::Relaxed);
}

fn ring_push(byte: u8) {
    let at = RING.head.fetch_add(1, Ordering::Relaxed);
    RING.bytes[(at % RING_SIZE as u64) as usize].store(byte, Ordering::Relaxed);
}

/// Bytes of console output so far (the position after the last one).
pub fn ring_head() -> u64 {
    RING.head.load(Ordering::Acquire)
}

/// Copies console output from position `from` into `out`; returns the bytes copied and the
/// oldest position still in the ring (a reader behind it lost output).
pub fn ring_read(from: u64, out: &mut [u8]) -> (usize, u64) {
    let head = RING.head.load(Ordering::Acquire);
    let oldest = head.saturating_sub(RING_SIZE as u64);
    let start = from.max(oldest);
    let count = (head.saturating_sub(start) as usize).min(out.len());
    for (i, slot) in out.iter_mut().take(count).enumerate() {
        *slot =
            RING.bytes[((start + i as u64) % RING_SIZE as u64) as usize].load(Ordering::Relaxed);
    }
    (count, oldest)
}

/// Writes a line into the console ring only, not to the UART: routine events (a cell created,
/// started, shut down, destroyed) that `cellvisor console` shows, without cutting into the
/// root cell's output on the UART both share. Under the console lock, so that it does not
/// interleave with another CPU's output in the ring.
pub fn record(args: core::fmt::Arguments<'_>) {
    let _guard = cellvisor_console::console().lock();
    struct RingWriter;
    impl Write for RingWriter {
        fn write_str(&mut self, text: &str) -> core::fmt::Result {
            text.bytes().for_each(ring_push);
            Ok(())
        }
    }
    let _ = RingWriter.write_fmt(args);
}

/// The console's UART: the board's driver plus a copy into the ring.
struct Tee(&'static mut DriverKind);

impl Uart for Tee {
    fn write_byte(&mut self, byte: u8) {
        self.0.hardware().write_byte(byte);
        let off = RING_OFF
            .get(super::cpu_index())
            .is_some_and(|off| off.load(Ordering::Relaxed));
        if !off {
            ring_push(byte);
        }
    }

    fn flush(&mut self) {
        self.0.hardware().flush();
    }
}

struct TeeSlot(UnsafeCell<Option<Tee>>);
// SAFETY: written once by the boot CPU in `init`; afterwards only reached through the
// console's lock.
unsafe impl Sync for TeeSlot {}
static TEE: TeeSlot = TeeSlot(UnsafeCell::new(None));

/// A driver for the UART at `base`.
///
/// # Safety
///
/// `base` is the board's UART, mapped as device memory (or reached with the MMU off), and
/// the caller makes sure no other driver writes to it at the same time, or accepts
/// interleaved output on a fatal path.
unsafe fn driver(kind: UartKind, base: PhysAddr) -> DriverKind {
    let at = MmioAddr::new(base.as_u64() as usize);
    // SAFETY: as the caller guarantees.
    unsafe {
        match kind {
            UartKind::Pl011 => DriverKind::Pl011(Pl011::at(at)),
            UartKind::Cadence => DriverKind::Cadence(CadenceUart::at(at)),
        }
    }
}

impl DriverKind {
    fn uart(&mut self) -> &mut (dyn Uart + Send) {
        match self {
            DriverKind::Pl011(uart) => uart,
            DriverKind::Cadence(uart) => uart,
        }
    }

    fn hardware(&mut self) -> &mut (dyn Uart + Send) {
        self.uart()
    }

    fn init(&mut self) {
        match self {
            DriverKind::Pl011(uart) => uart.init(),
            DriverKind::Cadence(uart) => uart.init(),
        }
    }
}

/// Remembers the UART for early reports. Called first thing by the boot CPU.
pub fn set_early(kind: UartKind, base: PhysAddr) {
    let code = match kind {
        UartKind::Pl011 => 1,
        UartKind::Cadence => 2,
    };
    EARLY_UART.store(base.as_u64() | code, Ordering::Relaxed);
}

/// Installs the console on the board's UART (mapped by the EL2 map). Boot CPU only, once.
pub fn init(kind: UartKind, base: PhysAddr) {
    // SAFETY: only the boot CPU runs, once, so this is the only reference to the slot.
    let slot = unsafe { &mut *DRIVER.0.get() };
    // SAFETY: the UART is mapped as device memory by the EL2 map and no other driver uses
    // it from now on (early reports stop once the console is installed).
    let driver = slot.insert(unsafe { driver(kind, base) });
    driver.init();
    // SAFETY: only the boot CPU runs, once: the only reference to the tee slot.
    let tee = unsafe { &mut *TEE.0.get() }.insert(Tee(driver));
    let uart: ConsoleUart = tee;
    let level = if cfg!(debug_assertions) {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    // A second call (which does not happen) would keep the first logger.
    let _ = cellvisor_console::init(uart, super::cpu_index, level);
}

/// Ordinary console output, one piece under the console lock.
pub fn print(args: core::fmt::Arguments<'_>) {
    cellvisor_console::write_fmt(args);
}

/// Writes a fatal report: through the console if it is installed, even if another CPU holds
/// its lock for too long, or straight to the UART before that.
pub fn report(args: core::fmt::Arguments<'_>) {
    // SAFETY: reports come from panic and fatal-exception paths, after which this CPU parks
    // and never returns to code that might hold the console.
    if unsafe { emergency_write_fmt(args) } != EmergencyWrite::NoUart {
        return;
    }
    let early = EARLY_UART.load(Ordering::Relaxed);
    let kind = match early & 0b11 {
        1 => UartKind::Pl011,
        2 => UartKind::Cadence,
        _ => return,
    };
    // SAFETY: the console is not installed, so no other driver owns the UART; the address
    // is reached identity mapped (MMU off or on).
    let mut driver = unsafe { driver(kind, PhysAddr::new(early & !0b11)) };
    driver.init();
    let _ = CrLfWriter::new(driver.uart()).write_fmt(args);
    driver.uart().flush();
}
