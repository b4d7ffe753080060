//! `timer-demo` for x86 cells: its local APIC timer every millisecond, in TSC-deadline mode
//! where the CPU has it, else one-shot (QEMU's TCG has no TSC-deadline mode). Each interrupt
//! measures its latency, the TSC at the interrupt's entry minus the deadline. In one-shot
//! mode the deadline is estimated: after arming, the current count is read (the read traps)
//! between two TSC reads, and the deadline is their middle plus the remaining count in TSC
//! ticks, at the APIC timer's rate measured against the TSC at the start; the estimate is off
//! by at most half that read's round trip through the hypervisor;
//! every 100 ticks a line reports minimum, average and maximum since the start, and once,
//! after the first 1000 samples, a summary line gives them in nanoseconds and in TSC ticks
//! (the format of the Arm `timer-demo`, which `cargo xtask bench` reads):
//!
//! ```text
//! timer-demo: started on 8250 at 0x2f8, local APIC timer (one-shot, 1000000000 Hz), TSC 1000000000 Hz
//! timer-demo: ticks=100 latency ns min=2412 avg=3270 max=9130
//! timer-demo: samples=1000 latency ns min=2412 avg=3301 max=9130 ticks min=2412 avg=3301 max=9130
//! ```
//!
//! It approves a shutdown request (`timer-demo: shutdown approved`) and parks.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
#[path = "../rt.rs"]
#[allow(dead_code)]
mod rt;

#[cfg(target_os = "none")]
mod demo {
    use super::rt;
    use core::fmt::Write as _;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// Timer period.
    const PERIOD_NS: u64 = 1_000_000;
    /// Ticks between two reports.
    const REPORT_EVERY: u64 = 100;
    /// Samples in the summary line.
    const SUMMARY_SAMPLES: u64 = 1000;

    /// The period in TSC ticks, and what the interrupt handler measures (written by the
    /// handler only, read by `main` with interrupts off).
    static PERIOD: AtomicU64 = AtomicU64::new(0);
    static DEADLINE: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static MIN: AtomicU64 = AtomicU64::new(u64::MAX);
    static MAX: AtomicU64 = AtomicU64::new(0);
    static SUM: AtomicU64 = AtomicU64::new(0);
    /// The summary of the first samples: min, sum, max.
    static SUMMARY: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
    /// One-shot mode: the APIC timer's ticks per period (0: TSC-deadline mode), and the TSC
    /// and APIC timer rates.
    static ONESHOT_COUNT: AtomicU64 = AtomicU64::new(0);
    static TSC_HZ: AtomicU64 = AtomicU64::new(1);
    static APIC_HZ: AtomicU64 = AtomicU64::new(1);

    /// Arms the next one-shot period and returns the estimated TSC deadline.
    fn arm_oneshot() -> u64 {
        rt::arm_oneshot(ONESHOT_COUNT.load(Ordering::Relaxed) as u32);
        let (before, remaining, after) = rt::current_count();
        let ticks = u128::from(remaining) * u128::from(TSC_HZ.load(Ordering::Relaxed))
            / u128::from(APIC_HZ.load(Ordering::Relaxed).max(1));
        before / 2 + after / 2 + ticks as u64
    }

    /// The APIC timer's rate against the TSC: the count over about a millisecond of TSC.
    fn apic_timer_hz(tsc_hz: u64) -> u64 {
        rt::arm_oneshot(u32::MAX);
        let (t1, c1, _) = rt::current_count();
        while rt::now() - t1 < tsc_hz / 1000 {
            core::hint::spin_loop();
        }
        let (t2, c2, _) = rt::current_count();
        rt::arm_oneshot(0);
        (u128::from(c1 - c2) * u128::from(tsc_hz) / u128::from((t2 - t1).max(1))) as u64
    }

    /// The timer fired (from the interrupt stub, with the TSC at its entry): records the
    /// latency and arms the next deadline, periods without drift, missed ones skipped.
    extern "C" fn on_timer(entry: u64) {
        let deadline = DEADLINE.load(Ordering::Relaxed);
        let latency = entry.saturating_sub(deadline);
        MIN.fetch_min(latency, Ordering::Relaxed);
        MAX.fetch_max(latency, Ordering::Relaxed);
        SUM.fetch_add(latency, Ordering::Relaxed);
        let count = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
        if count == SUMMARY_SAMPLES {
            SUMMARY[0].store(MIN.load(Ordering::Relaxed), Ordering::Relaxed);
            SUMMARY[1].store(SUM.load(Ordering::Relaxed), Ordering::Relaxed);
            SUMMARY[2].store(MAX.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        if ONESHOT_COUNT.load(Ordering::Relaxed) != 0 {
            DEADLINE.store(arm_oneshot(), Ordering::Relaxed);
            return;
        }
        let period = PERIOD.load(Ordering::Relaxed);
        let now = rt::now();
        let mut next = deadline + period;
        if next <= now {
            next = now + period - (now - deadline) % period;
        }
        DEADLINE.store(next, Ordering::Relaxed);
        rt::set_deadline(next);
    }

    fn ns(ticks: u64, hz: u64) -> u64 {
        (u128::from(ticks) * 1_000_000_000 / u128::from(hz.max(1))) as u64
    }

    #[no_mangle]
    extern "C" fn inmate_main() -> ! {
        let mut console = rt::Console::init();
        let hz = rt::tsc_frequency();
        if hz == 0 {
            let _ = writeln!(console, "timer-demo: no TSC frequency: stopped");
            rt::park();
        }
        TSC_HZ.store(hz, Ordering::Relaxed);
        let period = (u128::from(PERIOD_NS) * u128::from(hz) / 1_000_000_000) as u64;
        PERIOD.store(period.max(1), Ordering::Relaxed);
        rt::set_timer_handler(on_timer);
        rt::load_idt();
        if rt::has_tsc_deadline() {
            let _ = writeln!(
                console,
                "timer-demo: started on 8250 at 0x2f8, local APIC timer (TSC deadline), TSC {hz} Hz"
            );
            rt::start_deadline_timer();
            let first = rt::now() + period;
            DEADLINE.store(first, Ordering::Relaxed);
            rt::set_deadline(first);
        } else {
            rt::start_oneshot_timer();
            let apic_hz = apic_timer_hz(hz);
            let _ = writeln!(
                console,
                "timer-demo: started on 8250 at 0x2f8, local APIC timer (one-shot, {apic_hz} Hz), TSC {hz} Hz"
            );
            let count = (u128::from(PERIOD_NS) * u128::from(apic_hz) / 1_000_000_000) as u64;
            if count == 0 || count > u64::from(u32::MAX) {
                let _ = writeln!(console, "timer-demo: unusable APIC timer rate: stopped");
                rt::park();
            }
            APIC_HZ.store(apic_hz, Ordering::Relaxed);
            ONESHOT_COUNT.store(count, Ordering::Relaxed);
            DEADLINE.store(arm_oneshot(), Ordering::Relaxed);
        }
        let (mut reported, mut summarized) = (0, false);
        loop {
            rt::wait_for_interrupt();
            if rt::shutdown_requested() {
                rt::apic_write(0x320, 1 << 16);
                rt::approve_shutdown();
                let _ = writeln!(console, "timer-demo: shutdown approved");
                rt::park();
            }
            let count = COUNT.load(Ordering::Relaxed);
            if count >= reported + REPORT_EVERY {
                reported = count;
                let (min, sum, max) = (
                    MIN.load(Ordering::Relaxed),
                    SUM.load(Ordering::Relaxed),
                    MAX.load(Ordering::Relaxed),
                );
                let _ = writeln!(
                    console,
                    "timer-demo: ticks={count} latency ns min={} avg={} max={}",
                    ns(min, hz),
                    ns(sum / count.max(1), hz),
                    ns(max, hz)
                );
            }
            if !summarized && count >= SUMMARY_SAMPLES {
                summarized = true;
                let min = SUMMARY[0].load(Ordering::Relaxed);
                let avg = SUMMARY[1].load(Ordering::Relaxed) / SUMMARY_SAMPLES;
                let max = SUMMARY[2].load(Ordering::Relaxed);
                let _ = writeln!(
                    console,
                    "timer-demo: samples={SUMMARY_SAMPLES} latency ns min={} avg={} max={} ticks min={min} avg={avg} max={max}",
                    ns(min, hz),
                    ns(avg, hz),
                    ns(max, hz)
                );
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
