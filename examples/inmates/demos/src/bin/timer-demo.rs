//! `timer-demo`: a periodic virtual-timer interrupt every millisecond. Each tick measures the
//! interrupt latency, the virtual count at the IRQ vector minus the deadline the timer was
//! armed with; every 100 ticks a line reports minimum, average and maximum since the start,
//! and once, after the first 1000 samples, a summary line gives them in nanoseconds and in
//! counter ticks. At the start it also reports the virtual count at its first instruction
//! ([`cellvisor_inmate::start_counter`]), for the time from entry to the inmate's work:
//!
//! ```text
//! timer-demo: started on pl011 at 0x9040000, GICv3, timer 62500000 Hz
//! timer-demo: first instruction at counter 123456789
//! timer-demo: ticks=100 latency ns min=112 avg=236 max=1088
//! ...
//! timer-demo: samples=1000 latency ns min=112 avg=240 max=1088 ticks min=7 avg=15 max=68
//! ```
//!
//! It approves a shutdown request (`timer-demo: shutdown approved`) and parks.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod demo {
    use cellvisor_inmate::comm::{Mailbox, Message};
    use cellvisor_inmate::gic::{Gic, DEFAULT_PRIORITY};
    use cellvisor_inmate::irq::{self, Interrupt, IrqMutex};
    use cellvisor_inmate::stats::MinAvgMax;
    use cellvisor_inmate::timer::{self, VIRTUAL_TIMER_INTID};
    use cellvisor_inmate::{console, park, println, start_counter, sysreg, Platform};

    cellvisor_inmate::entry!(main);

    /// Timer period: short, so that the summary comes after about a second.
    const PERIOD_NS: u64 = 1_000_000;
    /// Ticks between two reports (100 ms).
    const REPORT_EVERY: u64 = 100;
    /// Samples in the summary line.
    const SUMMARY_SAMPLES: u64 = 1000;

    /// What the interrupt handler measures.
    struct Ticks {
        /// Timer period in counter ticks.
        period: u64,
        /// Interrupts handled.
        count: u64,
        /// Latencies in counter ticks.
        latency: MinAvgMax,
        /// The latencies of the first [`SUMMARY_SAMPLES`] interrupts, once there are that many.
        summary: Option<MinAvgMax>,
    }

    static TICKS: IrqMutex<Ticks> = IrqMutex::new(Ticks {
        period: 0,
        count: 0,
        latency: MinAvgMax::new(),
        summary: None,
    });

    fn main(platform: &Platform) -> ! {
        let frequency = platform.timer_frequency.get();
        let gic = match Gic::from_platform(platform) {
            Ok(gic) => gic,
            Err(error) => {
                println!("timer-demo: no usable GIC: {error:?}");
                park();
            }
        };
        let uart = console::uart();
        println!(
            "timer-demo: started on {} at {:#x}, GICv{}, timer {} Hz",
            uart.map_or("no uart", |u| u.kind().name()),
            uart.map_or(0, |u| u.base()),
            gic.version().number(),
            frequency,
        );
        println!(
            "timer-demo: first instruction at counter {}",
            start_counter()
        );
        let period = timer::ns_to_ticks(PERIOD_NS, frequency);
        if period == 0 {
            println!("timer-demo: the timer frequency is unknown");
            park();
        }
        if let Err(error) = gic.init() {
            println!("timer-demo: cannot set up the GIC: {error:?}");
            park();
        }

        TICKS.lock(|ticks| ticks.period = period);
        irq::set_handler(gic, on_interrupt);
        if let Err(error) = gic.enable(VIRTUAL_TIMER_INTID, DEFAULT_PRIORITY) {
            println!("timer-demo: cannot enable the timer interrupt: {error:?}");
            park();
        }
        timer::set_deadline(timer::counter() + period);
        irq::enable();

        let mut mailbox = Mailbox::new();
        let mut reported = 0;
        let mut summarized = false;
        loop {
            sysreg::wfi();
            if mailbox.poll() == Some(Message::ShutdownRequest) {
                mailbox.approve_and_park("timer-demo");
            }
            let (report, summary) = TICKS.lock(|ticks| {
                let report = (ticks.count >= reported + REPORT_EVERY)
                    .then_some((ticks.count, ticks.latency));
                (report, ticks.summary.filter(|_| !summarized))
            });
            if let Some((count, latency)) = report {
                reported = count;
                let (min, avg, max) = latency.map(|t| timer::ticks_to_ns(t, frequency));
                println!("timer-demo: ticks={count} latency ns min={min} avg={avg} max={max}");
            }
            if let Some(latency) = summary {
                summarized = true;
                let (min, avg, max) = latency.map(|t| timer::ticks_to_ns(t, frequency));
                println!(
                    "timer-demo: samples={} latency ns min={min} avg={avg} max={max} ticks min={} \
                     avg={} max={}",
                    latency.count(),
                    latency.min(),
                    latency.avg(),
                    latency.max(),
                );
            }
        }
    }

    /// The virtual timer fired: record the latency and arm the next period.
    fn on_interrupt(interrupt: Interrupt) {
        if interrupt.intid != VIRTUAL_TIMER_INTID {
            return;
        }
        let deadline = timer::deadline();
        TICKS.lock(|ticks| {
            ticks
                .latency
                .record(interrupt.entry_counter.saturating_sub(deadline));
            ticks.count += 1;
            if ticks.count == SUMMARY_SAMPLES {
                ticks.summary = Some(ticks.latency);
            }
            // Periods follow the first deadline without drift; missed ones are skipped.
            let now = timer::counter();
            let mut next = deadline + ticks.period;
            if next <= now {
                next = now + ticks.period - (now - deadline) % ticks.period;
            }
            timer::set_deadline(next);
        });
    }
}

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
