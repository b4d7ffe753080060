//! The debug console on the board's UART, through `cellvisor-console`.

use super::HV;
use crate::board::UartKind;
use cellvisor_console::{
    emergency_write_fmt, CadenceUart, ConsoleUart, CrLfWriter, EmergencyWrite, MmioAddr,
    MmioRegion, Pl011, Uart,
};
use cellvisor_paging::PhysAddr;
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

/// The board's UART, for reports made before the console is installed: kind (0 none,
/// 1 PL011, 2 Cadence) in bits \[1:0\], base address above.
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

/// The console's UART: the board's driver plus a copy into the ring.
struct Tee(&'static mut DriverKind);

impl Uart for Tee {
    fn write_byte(&mut self, byte: u8) {
        self.0.hardware().write_byte(byte);
        if !HV.ring_off(super::cpu_index()) {
            HV.ring().push(byte);
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
