//! A periodic tick from the virtual timer, for programs that only need to wake up now and
//! then (to poll the communication region, to print): between ticks the CPU sleeps in `wfi`
//! instead of spinning, which leaves the host (or the hardware) alone.
//!
//! The ticker installs its own IRQ handler ([`irq::set_handler`]), so a program that handles
//! interrupts itself does not use it. If the GIC cannot be set up, [`Ticker::wait`] spins on
//! the counter instead.

use core::sync::atomic::{AtomicU64, Ordering};

use cellvisor_abi::comm::Platform;

use crate::gic::{self, Gic, DEFAULT_PRIORITY};
use crate::irq::{self, Interrupt};
use crate::sysreg;
use crate::timer::{self, VIRTUAL_TIMER_INTID};

/// Period in counter ticks, for the handler.
static PERIOD: AtomicU64 = AtomicU64::new(0);
/// Ticks so far. Only the handler writes it (plain load and store, see [`irq::IrqMutex`]).
static COUNT: AtomicU64 = AtomicU64::new(0);

/// A running ticker.
#[derive(Debug)]
pub struct Ticker {
    /// Period in counter ticks.
    period: u64,
    /// Interrupt mode: the tick count last seen. Spinning mode: the next deadline.
    mark: u64,
    /// Whether the timer interrupt wakes the CPU (else `wait` spins).
    interrupts: bool,
}

impl Ticker {
    /// Starts a tick every `period_ns` nanoseconds (at least one counter tick). Sets up the
    /// GIC, installs the ticker's IRQ handler and unmasks IRQs; if the GIC is unusable, the
    /// ticker spins and the error says why.
    pub fn start(platform: &Platform, period_ns: u64) -> (Self, Result<(), gic::Error>) {
        let period = timer::ns_to_ticks(period_ns, platform.timer_frequency.get()).max(1);
        let now = timer::counter();
        let setup = Gic::from_platform(platform).and_then(|gic| {
            gic.init()?;
            PERIOD.store(period, Ordering::Relaxed);
            irq::set_handler(gic, on_interrupt);
            gic.enable(VIRTUAL_TIMER_INTID, DEFAULT_PRIORITY)
        });
        let ticker = match setup {
            Ok(()) => {
                timer::set_deadline(now + period);
                irq::enable();
                Self {
                    period,
                    mark: COUNT.load(Ordering::Relaxed),
                    interrupts: true,
                }
            }
            Err(_) => Self {
                period,
                mark: now + period,
                interrupts: false,
            },
        };
        (ticker, setup)
    }

    /// The period in counter ticks.
    pub fn period(&self) -> u64 {
        self.period
    }

    /// Waits for the next tick.
    pub fn wait(&mut self) {
        if !self.interrupts {
            while timer::counter() < self.mark {}
            self.mark += self.period;
            return;
        }
        loop {
            // Masked, so that the tick cannot come between the check and the `wfi` (which
            // still wakes up on a pending interrupt); unmasking runs the handler.
            irq::disable();
            let count = COUNT.load(Ordering::Relaxed);
            if count != self.mark {
                self.mark = count;
                irq::enable();
                return;
            }
            sysreg::wfi();
            irq::enable();
        }
    }
}

/// The virtual timer fired: count the tick and arm the next one.
fn on_interrupt(interrupt: Interrupt) {
    if interrupt.intid != VIRTUAL_TIMER_INTID {
        return;
    }
    let period = PERIOD.load(Ordering::Relaxed);
    let now = timer::counter();
    let mut next = timer::deadline() + period;
    if next <= now {
        next = now + period;
    }
    timer::set_deadline(next);
    COUNT.store(COUNT.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}
