//! The console: one UART shared by every CPU, a [`log`] backend on it, and an emergency path
//! for panic and fatal-exception reports.
//!
//! # Rules
//!
//! - **A line is never interleaved.** Every log record, [`Console::write_fmt`] call and
//!   [`ConsoleGuard`] holds the console lock (a [`cellvisor_sync::Mutex`]: a CPU that finds it
//!   taken sleeps until it is free, through the hooks the hypervisor installs there, or spins
//!   without them) from its first byte to its last. Hold a [`ConsoleGuard`] to keep a multi-line
//!   report (a register dump) together.
//! - **Do not wait for another CPU while holding the lock** (IPIs, rendezvous, TLB shootdown):
//!   that CPU may be spinning on the console.
//! - **Exception and interrupt handlers do not log.** They may have interrupted their own CPU
//!   inside the console. Instead of deadlocking, the normal path notices that this CPU already
//!   holds the lock and drops the message; fatal reports use [`Console::emergency_write_fmt`].
//! - **The emergency path never deadlocks.** It takes the lock if it is free, writes without it
//!   at once if this CPU holds it (the holder was interrupted and will not resume), and
//!   otherwise waits `spin_limit` attempts for another CPU to release it, then writes without
//!   it (that CPU is taken to have stopped, e.g. after faulting itself). It flushes the UART
//!   before returning so the report is out before the CPU halts or the machine resets.
//!
//! The CPU number comes from a function the hypervisor installs (`MPIDR_EL1`-derived on Arm,
//! the APIC ID on x86); this crate knows no architecture.

use core::fmt::{self, Write};
use core::hint::spin_loop;
use core::sync::atomic::{AtomicUsize, Ordering};

use cellvisor_sync::{Mutex, MutexGuard};
use log::{LevelFilter, Log, Metadata, Record, SetLoggerError};
use spin::Once;

use crate::uart::{CrLfWriter, Uart};

/// How many times [`Console::emergency_write_fmt`] tries the lock held by another CPU before
/// writing without it, unless the console was built with [`Console::with_spin_limit`].
///
/// About 2^24 lock attempts: tens to hundreds of milliseconds on a GHz core, well above the
/// time one line takes at 115200 baud (about 87 µs per character).
pub const DEFAULT_SPIN_LIMIT: usize = 1 << 24;

/// `owner` when nobody holds the lock.
const NO_OWNER: usize = usize::MAX;

/// The UART the console writes to: any driver, borrowed for the rest of the program.
pub type ConsoleUart = &'static mut (dyn Uart + Send);

/// A UART shared by all CPUs; see the [module documentation](self) for the rules.
///
/// The hypervisor uses the global one through [`init`] and the free functions of
/// this crate; tests and special set-ups can build their own.
pub struct Console {
    uart: Mutex<Option<ConsoleUart>>,
    /// CPU number of the lock holder, or [`NO_OWNER`]. Only compared with the caller's own CPU
    /// number, and a CPU always sees its own last store, so relaxed accesses suffice.
    owner: AtomicUsize,
    cpu_id: Once<fn() -> usize>,
    level: AtomicUsize,
    spin_limit: usize,
}

/// How [`Console::emergency_write_fmt`] delivered its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmergencyWrite {
    /// The lock was free or became free: written like any other line.
    Locked,
    /// This CPU held the lock (the report interrupted console code): written without it.
    HeldByThisCpu,
    /// Another CPU held the lock for `spin_limit` attempts: written without it.
    TimedOut,
    /// No UART is installed: nothing written.
    NoUart,
}

impl Console {
    /// A console without a UART (everything written is dropped until [`Console::install`]),
    /// logging nothing.
    pub const fn new() -> Self {
        Self::with_spin_limit(DEFAULT_SPIN_LIMIT)
    }

    /// Like [`Console::new`], with the emergency path waiting `spin_limit` lock attempts for
    /// another CPU.
    pub const fn with_spin_limit(spin_limit: usize) -> Self {
        Self {
            uart: Mutex::new(None),
            owner: AtomicUsize::new(NO_OWNER),
            cpu_id: Once::new(),
            level: AtomicUsize::new(LevelFilter::Off as usize),
            spin_limit,
        }
    }

    /// Makes `uart` the console's UART, `cpu_id` the source of CPU numbers and `level` the most
    /// verbose level logged. Returns the UART this one replaces, if any (e.g. an early boot
    /// console).
    ///
    /// The CPU-number function is fixed by the first call; later calls keep it. Must not be
    /// called while this CPU holds the console (it waits for the lock).
    pub fn install(
        &self,
        uart: ConsoleUart,
        cpu_id: fn() -> usize,
        level: LevelFilter,
    ) -> Option<ConsoleUart> {
        self.cpu_id.call_once(|| cpu_id);
        self.set_level(level);
        self.lock_slot().slot.replace(uart)
    }

    /// Changes the most verbose level this console logs.
    pub fn set_level(&self, level: LevelFilter) {
        self.level.store(level as usize, Ordering::Relaxed);
    }

    /// The most verbose level this console logs.
    pub fn level(&self) -> LevelFilter {
        let level = self.level.load(Ordering::Relaxed);
        LevelFilter::iter().nth(level).unwrap_or(LevelFilter::Trace)
    }

    /// Takes the console for several writes that must stay together.
    ///
    /// Returns `None` if no UART is installed, or if this CPU already holds the console (it
    /// was interrupted inside it): waiting would never end.
    pub fn lock(&self) -> Option<ConsoleGuard<'_>> {
        let cpu = self.current_cpu();
        let guard = match self.try_lock_as(cpu) {
            Some(guard) => guard,
            // Only this CPU's own store makes `owner` name it, so this cannot change while
            // it waits.
            None if self.owner.load(Ordering::Relaxed) == cpu => return None,
            None => self.lock_as(cpu),
        };
        guard.slot.is_some().then_some(guard)
    }

    /// Writes formatted text, `"\n"` sent as `"\r\n"`, as one uninterrupted piece.
    ///
    /// Dropped if [`Console::lock`] returns `None`.
    pub fn write_fmt(&self, args: fmt::Arguments<'_>) {
        if let Some(mut guard) = self.lock() {
            // A UART cannot fail; only a Display impl can, and then the rest is dropped.
            let _ = guard.write_fmt(args);
        }
    }

    /// Writes a panic or fatal-exception report without ever deadlocking on the console lock,
    /// then flushes the UART. See the [module documentation](self) for when it writes without
    /// the lock.
    ///
    /// # Safety
    ///
    /// Writing without the lock creates a second `&mut` to the UART driver while the lock
    /// holder still has one, which is sound only if the holder never uses it again. The caller
    /// guarantees that:
    ///
    /// - it does not return to the code it interrupted on this CPU: it is a panic handler, or
    ///   a fatal-exception report that ends by stopping the CPU;
    /// - a CPU that holds the console lock for `spin_limit` attempts has stopped (faulted and
    ///   halted, say). With [`DEFAULT_SPIN_LIMIT`] a running CPU holds it that long only for a
    ///   very long piece of text at a low baud rate, or if its UART cannot transmit.
    pub unsafe fn emergency_write_fmt(&self, args: fmt::Arguments<'_>) -> EmergencyWrite {
        let cpu = self.current_cpu();
        let mut attempts = 0;
        let delivery = loop {
            if let Some(mut guard) = self.try_lock_as(cpu) {
                return match guard.slot.as_deref_mut() {
                    Some(uart) => {
                        emit(uart, args);
                        EmergencyWrite::Locked
                    }
                    None => EmergencyWrite::NoUart,
                };
            }
            if self.owner.load(Ordering::Relaxed) == cpu {
                break EmergencyWrite::HeldByThisCpu;
            }
            if attempts >= self.spin_limit {
                break EmergencyWrite::TimedOut;
            }
            attempts += 1;
            spin_loop();
        };
        // SAFETY: The lock is held by an interrupted frame of this CPU that will not resume, or
        // by a CPU that held it for `spin_limit` attempts and is taken to have stopped; the
        // caller guarantees both (see # Safety). Either way the holder's reference to the slot
        // is not used again while this one exists. The slot itself is only written by
        // `install`, at boot.
        let slot = unsafe { &mut *self.uart.data_ptr() };
        match slot.as_deref_mut() {
            Some(uart) => {
                emit(uart, args);
                delivery
            }
            None => EmergencyWrite::NoUart,
        }
    }

    fn current_cpu(&self) -> usize {
        self.cpu_id.get().map_or(0, |cpu_id| cpu_id())
    }

    fn try_lock_as(&self, cpu: usize) -> Option<ConsoleGuard<'_>> {
        Some(self.held_by(cpu, self.uart.try_lock()?))
    }

    /// Waits for the lock (sleeping, see [`cellvisor_sync`]) and takes it.
    fn lock_as(&self, cpu: usize) -> ConsoleGuard<'_> {
        self.held_by(cpu, self.uart.lock())
    }

    /// The guard of the lock `slot` that `cpu` took.
    fn held_by<'a>(
        &'a self,
        cpu: usize,
        slot: MutexGuard<'a, Option<ConsoleUart>>,
    ) -> ConsoleGuard<'a> {
        self.owner.store(cpu, Ordering::Relaxed);
        ConsoleGuard {
            console: self,
            slot,
        }
    }

    /// The slot, for `install`, which runs at boot and does not care about re-entrance.
    fn lock_slot(&self) -> ConsoleGuard<'_> {
        self.lock_as(self.current_cpu())
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console")
            .field("level", &self.level())
            .field("spin_limit", &self.spin_limit)
            .finish_non_exhaustive()
    }
}

/// Writes `"[<cpu>] <LEVEL> <message>\n"` for each enabled record, as one piece.
impl Log for Console {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let cpu = self.current_cpu();
        if let Some(mut guard) = self.lock() {
            let _ = writeln!(guard, "[{cpu}] {} {}", record.level(), record.args());
        }
    }

    fn flush(&self) {
        if let Some(mut guard) = self.lock() {
            guard.uart().flush();
        }
    }
}

/// Exclusive use of the console, from [`Console::lock`]; writes with `"\n"` sent as `"\r\n"`.
pub struct ConsoleGuard<'a> {
    console: &'a Console,
    slot: MutexGuard<'a, Option<ConsoleUart>>,
}

impl ConsoleGuard<'_> {
    /// The UART itself, for raw bytes or [`Uart::flush`].
    pub fn uart(&mut self) -> &mut (dyn Uart + Send) {
        self.slot
            .as_deref_mut()
            .expect("Console::lock only hands out a guard when a UART is installed")
    }
}

impl Write for ConsoleGuard<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        CrLfWriter::new(self.uart()).write_str(text)
    }
}

impl Drop for ConsoleGuard<'_> {
    fn drop(&mut self) {
        // Before the slot's guard (a field) unlocks, so `owner` never names a CPU that has
        // let go.
        self.console.owner.store(NO_OWNER, Ordering::Relaxed);
    }
}

impl fmt::Debug for ConsoleGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleGuard").finish_non_exhaustive()
    }
}

fn emit(uart: &mut (dyn Uart + Send), args: fmt::Arguments<'_>) {
    let _ = CrLfWriter::new(&mut *uart).write_fmt(args);
    uart.flush();
}

/// The hypervisor's console.
static CONSOLE: Console = Console::new();

/// The global console that [`init`] sets up and the free functions write to.
pub fn console() -> &'static Console {
    &CONSOLE
}

/// Sets up the global console on `uart` and makes it the [`log`] crate's logger, logging
/// `level` and below. `cpu_id` returns the number of the CPU it runs on.
///
/// Call it once, on the boot CPU, before the other CPUs start. A second call fails (the `log`
/// crate takes one logger per program) and changes nothing; to switch UARTs later, use
/// [`Console::install`] on [`console()`].
///
/// # Errors
///
/// If a logger is already set.
pub fn init(
    uart: ConsoleUart,
    cpu_id: fn() -> usize,
    level: LevelFilter,
) -> Result<(), SetLoggerError> {
    log::set_logger(&CONSOLE)?;
    CONSOLE.install(uart, cpu_id, level);
    log::set_max_level(level);
    Ok(())
}

/// Changes the most verbose level logged, for the global console and the `log` crate.
pub fn set_level(level: LevelFilter) {
    CONSOLE.set_level(level);
    log::set_max_level(level);
}

/// Writes formatted text to the global console as one piece; what [`print!`](crate::print)
/// and [`println!`](crate::println) expand to.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    CONSOLE.write_fmt(args);
}

/// [`Console::emergency_write_fmt`] on the global console.
///
/// ```no_run
/// # use core::panic::PanicInfo;
/// # fn halt() -> ! { loop {} }
/// fn panic(info: &PanicInfo) -> ! {
///     // SAFETY: A panic handler never returns to the code it interrupted.
///     unsafe { cellvisor_console::emergency_write_fmt(format_args!("\nPANIC: {info}\n")) };
///     halt()
/// }
/// ```
///
/// # Safety
///
/// As for [`Console::emergency_write_fmt`].
pub unsafe fn emergency_write_fmt(args: fmt::Arguments<'_>) -> EmergencyWrite {
    // SAFETY: The caller upholds the contract, which is the same.
    unsafe { CONSOLE.emergency_write_fmt(args) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;
    use std::boxed::Box;
    use std::cell::Cell;
    use std::string::String;
    use std::sync::Arc;
    use std::vec::Vec;

    std::thread_local! {
        static CPU: Cell<usize> = const { Cell::new(0) };
    }

    fn test_cpu() -> usize {
        CPU.with(Cell::get)
    }

    fn set_cpu(cpu: usize) {
        CPU.with(|c| c.set(cpu));
    }

    /// A UART that records the bytes on the wire and the flushes.
    #[derive(Clone, Default)]
    struct Wire(Arc<spin::mutex::SpinMutex<(Vec<u8>, usize)>>);

    impl Wire {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().0.clone()).unwrap()
        }

        fn flushes(&self) -> usize {
            self.0.lock().1
        }

        fn leak(&self) -> ConsoleUart {
            Box::leak(Box::new(self.clone()))
        }
    }

    impl Uart for Wire {
        fn write_byte(&mut self, byte: u8) {
            self.0.lock().0.push(byte);
        }

        fn flush(&mut self) {
            self.0.lock().1 += 1;
        }
    }

    fn console_on(wire: &Wire, level: LevelFilter) -> &'static Console {
        let console = Box::leak(Box::new(Console::with_spin_limit(1000)));
        assert!(console.install(wire.leak(), test_cpu, level).is_none());
        console
    }

    fn log(console: &Console, level: Level, args: fmt::Arguments<'_>) {
        console.log(&Record::builder().level(level).args(args).build());
    }

    #[test]
    fn log_lines_have_the_exact_format() {
        let wire = Wire::default();
        let console = console_on(&wire, LevelFilter::Info);
        set_cpu(3);
        log(
            console,
            Level::Info,
            format_args!("cell {} started", "linux"),
        );
        log(console, Level::Error, format_args!("two\nlines"));
        assert_eq!(
            wire.text(),
            "[3] INFO cell linux started\r\n[3] ERROR two\r\nlines\r\n"
        );
    }

    #[test]
    fn levels_above_the_filter_are_dropped() {
        let wire = Wire::default();
        let console = console_on(&wire, LevelFilter::Warn);
        set_cpu(0);
        log(console, Level::Info, format_args!("quiet"));
        log(console, Level::Debug, format_args!("quiet"));
        log(console, Level::Warn, format_args!("loud"));
        assert_eq!(wire.text(), "[0] WARN loud\r\n");
        assert!(!console.enabled(&Metadata::builder().level(Level::Info).build()));
        console.set_level(LevelFilter::Trace);
        assert_eq!(console.level(), LevelFilter::Trace);
        log(console, Level::Trace, format_args!("now"));
        assert_eq!(wire.text(), "[0] WARN loud\r\n[0] TRACE now\r\n");
    }

    #[test]
    fn nothing_is_written_without_a_uart() {
        let console = Console::new();
        console.write_fmt(format_args!("lost"));
        assert!(console.lock().is_none());
        // SAFETY: No UART is installed, so nothing is written without the lock.
        let delivery = unsafe { console.emergency_write_fmt(format_args!("lost")) };
        assert_eq!(delivery, EmergencyWrite::NoUart);
    }

    #[test]
    fn install_returns_the_previous_uart() {
        let early = Wire::default();
        let late = Wire::default();
        let console = console_on(&early, LevelFilter::Info);
        console.write_fmt(format_args!("a"));
        let previous = console
            .install(late.leak(), test_cpu, LevelFilter::Info)
            .unwrap();
        previous.write_byte(b'!');
        console.write_fmt(format_args!("b"));
        assert_eq!(early.text(), "a!");
        assert_eq!(late.text(), "b");
    }

    #[test]
    fn guard_keeps_lines_together_and_flushes() {
        let wire = Wire::default();
        let console = console_on(&wire, LevelFilter::Info);
        let mut guard = console.lock().unwrap();
        writeln!(guard, "x0 = {:#x}", 1).unwrap();
        write!(guard, "x1 = {:#x}", 2).unwrap();
        guard.uart().flush();
        drop(guard);
        console.flush();
        assert_eq!(wire.text(), "x0 = 0x1\r\nx1 = 0x2");
        assert_eq!(wire.flushes(), 2);
    }

    #[test]
    fn reentry_on_the_same_cpu_drops_instead_of_deadlocking() {
        let wire = Wire::default();
        let console = console_on(&wire, LevelFilter::Info);
        set_cpu(1);
        let mut guard = console.lock().unwrap();
        write!(guard, "half a line").unwrap();
        // What an exception handler on this CPU would do now:
        log(console, Level::Error, format_args!("nested"));
        assert!(console.lock().is_none());
        drop(guard);
        assert_eq!(wire.text(), "half a line");
    }

    #[test]
    fn emergency_takes_a_free_lock_and_flushes() {
        let wire = Wire::default();
        let console = console_on(&wire, LevelFilter::Info);
        // SAFETY: Nobody holds the lock, so it is taken normally.
        let delivery = unsafe { console.emergency_write_fmt(format_args!("PANIC\n")) };
        assert_eq!(delivery, EmergencyWrite::Locked);
        assert_eq!(wire.text(), "PANIC\r\n");
        assert_eq!(wire.flushes(), 1);
        assert!(console.lock().is_some(), "the lock was released");
    }

    #[test]
    fn emergency_writes_at_once_when_this_cpu_holds_the_lock() {
        let wire = Wire::default();
        // A limit this large would make the test hang if the path waited for the lock.
        let console: &Console = Box::leak(Box::new(Console::with_spin_limit(usize::MAX)));
        console.install(wire.leak(), test_cpu, LevelFilter::Info);
        set_cpu(2);
        let mut guard = console.lock().unwrap();
        write!(guard, "[2] INFO interrupted ").unwrap();
        // SAFETY: The guard is not used again before it is dropped; it holds no reference to
        // the UART (spin's guard refers to the mutex only), dropping it only releases the lock.
        let delivery = unsafe { console.emergency_write_fmt(format_args!("\nFAULT\n")) };
        assert_eq!(delivery, EmergencyWrite::HeldByThisCpu);
        drop(guard);
        assert_eq!(wire.text(), "[2] INFO interrupted \r\nFAULT\r\n");
        assert_eq!(wire.flushes(), 1);
    }

    #[test]
    fn emergency_gives_up_on_another_cpu_after_the_spin_limit() {
        let wire = Wire::default();
        let console = console_on(&wire, LevelFilter::Info);
        let held = Arc::new(std::sync::Barrier::new(2));
        let done = Arc::new(std::sync::Barrier::new(2));
        let holder = {
            let (held, done) = (held.clone(), done.clone());
            std::thread::spawn(move || {
                set_cpu(5);
                let guard = console.lock().unwrap();
                held.wait();
                done.wait(); // "stopped" while holding the console
                drop(guard);
            })
        };
        held.wait();
        set_cpu(0);
        // SAFETY: The holder does not touch the UART again before it releases the lock.
        let delivery = unsafe { console.emergency_write_fmt(format_args!("CPU 0 PANIC\n")) };
        assert_eq!(delivery, EmergencyWrite::TimedOut);
        assert_eq!(wire.text(), "CPU 0 PANIC\r\n");
        done.wait();
        holder.join().unwrap();
        // The holder released the lock normally; the console works as before.
        console.write_fmt(format_args!("after\n"));
        assert_eq!(wire.text(), "CPU 0 PANIC\r\nafter\r\n");
    }

    #[test]
    fn lines_from_several_cpus_never_interleave() {
        const CPUS: usize = 4;
        const LINES: usize = 200;
        let wire = Wire::default();
        let console = console_on(&wire, LevelFilter::Info);
        let threads: Vec<_> = (0..CPUS)
            .map(|cpu| {
                std::thread::spawn(move || {
                    set_cpu(cpu);
                    for line in 0..LINES {
                        log(
                            console,
                            Level::Info,
                            format_args!("line {line} of cpu {cpu}, {}", "x".repeat(line % 17)),
                        );
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let text = wire.text();
        let mut next = [0; CPUS];
        for line in text.split_terminator("\r\n") {
            let cpu: usize = line[1..2].parse().unwrap();
            let expected = std::format!(
                "[{cpu}] INFO line {} of cpu {cpu}, {}",
                next[cpu],
                "x".repeat(next[cpu] % 17)
            );
            assert_eq!(line, expected);
            next[cpu] += 1;
        }
        assert_eq!(next, [LINES; CPUS]);
        assert!(text.ends_with("\r\n"));
    }

    /// The only test that touches the global console and the `log` crate's logger.
    #[test]
    fn init_installs_the_global_logger_once() {
        let wire = Wire::default();
        set_cpu(7);
        init(wire.leak(), test_cpu, LevelFilter::Debug).unwrap();
        log::debug!("hello {}", 42);
        log::trace!("filtered");
        crate::println!("plain {}", "print");
        crate::print!("no newline");
        write_fmt(format_args!("|"));
        set_level(LevelFilter::Trace);
        log::trace!("now visible");
        assert!(init(Wire::default().leak(), test_cpu, LevelFilter::Off).is_err());
        // SAFETY: Nobody holds the lock; this is a normal locked write.
        let delivery = unsafe { emergency_write_fmt(format_args!("!\n")) };
        assert_eq!(delivery, EmergencyWrite::Locked);
        assert_eq!(
            wire.text(),
            "[7] DEBUG hello 42\r\nplain print\r\nno newline|[7] TRACE now visible\r\n!\r\n"
        );
        assert_eq!(console().level(), LevelFilter::Trace);
    }
}
