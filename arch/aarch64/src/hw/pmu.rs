//! The hypervisor's own instruction counter: the last PMU event counter, reserved for EL2
//! with MDCR_EL2.HPMN and set to count INST_RETIRED (event 0x08) at EL2 only (Arm ARM D13,
//! "The Performance Monitors Extension"). Each trap is charged the instructions from the end
//! of the previous trap's handler to the end of its own (`cellvisor_core::TrapCounters::measure`).
//!
//! Cells keep the other counters: they see PMCR_EL0.N = HPMN. A cell can still stop or reset
//! the reserved counter through PMCNTENCLR_EL0 or PMCR_EL0.P on some implementations (QEMU
//! applies them to every counter); the counter is then re-enabled and the trap in between is
//! not measured.
//!
//! QEMU counts retired instructions only with `-icount` (precise mode); without it, or on a
//! CPU without a PMU, nothing is measured and the counts stay zero.

use core::sync::atomic::{AtomicU8, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Readable, Writeable, ID_AA64DFR0_EL1, MDCR_EL2};

/// INST_RETIRED: instruction architecturally executed.
const INST_RETIRED: u64 = 0x08;
/// PMEVTYPER<n>_EL0 filter: P (no EL1), U (no EL0), NSH (count EL2). NSK, NSU and M stay 0,
/// which with P and U set also filters Non-secure EL1/EL0 and EL3.
const FILTER_EL2_ONLY: u64 = 1 << 31 | 1 << 30 | 1 << 27;
/// Width of the counter (without FEAT_PMUv3p5 and MDCR_EL2.HLP, event counters are 32-bit).
const COUNTER_BITS: u32 = 32;
/// No counter reserved.
const NONE: u8 = u8::MAX;

/// The reserved counter's index, the same on every CPU (set by the first CPU that checks).
static COUNTER: AtomicU8 = AtomicU8::new(NONE);

// The PMU registers are accessed raw here: aarch64-cpu 11 has none of them (PMCR_EL0,
// PMCNTENSET_EL0, PMCEID0_EL0, PMEVCNTR<n>_EL0, PMEVTYPER<n>_EL0), only MDCR_EL2.
macro_rules! counter_registers {
    ($($n:literal => $cnt:literal, $typer:literal;)*) => {
        /// Reads PMEVCNTR<n>_EL0.
        #[inline]
        fn read_counter(n: u8) -> u64 {
            let value: u64;
            match n {
                $(
                    // SAFETY: reading a PMU event counter at EL2 has no side effect.
                    $n => unsafe {
                        core::arch::asm!(concat!("mrs {}, ", $cnt), out(reg) value, options(nomem, nostack, preserves_flags))
                    },
                )*
                _ => value = 0,
            }
            value
        }

        /// Writes PMEVTYPER<n>_EL0.
        fn write_type(n: u8, value: u64) {
            match n {
                $(
                    // SAFETY: the counter is reserved for EL2 (MDCR_EL2.HPMN <= n); its event
                    // type changes no memory.
                    $n => unsafe {
                        core::arch::asm!(concat!("msr ", $typer, ", {}"), in(reg) value, options(nomem, nostack, preserves_flags))
                    },
                )*
                _ => {}
            }
        }
    };
}

// PMEVCNTR<n>_EL0 = S3_3_C14_C(8 + n / 8)_(n % 8), PMEVTYPER<n>_EL0 = S3_3_C14_C(12 + n / 8)_(n % 8).
counter_registers! {
    1 => "S3_3_C14_C8_1", "S3_3_C14_C12_1";
    2 => "S3_3_C14_C8_2", "S3_3_C14_C12_2";
    3 => "S3_3_C14_C8_3", "S3_3_C14_C12_3";
    4 => "S3_3_C14_C8_4", "S3_3_C14_C12_4";
    5 => "S3_3_C14_C8_5", "S3_3_C14_C12_5";
    6 => "S3_3_C14_C8_6", "S3_3_C14_C12_6";
    7 => "S3_3_C14_C8_7", "S3_3_C14_C12_7";
    8 => "S3_3_C14_C9_0", "S3_3_C14_C13_0";
    9 => "S3_3_C14_C9_1", "S3_3_C14_C13_1";
    10 => "S3_3_C14_C9_2", "S3_3_C14_C13_2";
    11 => "S3_3_C14_C9_3", "S3_3_C14_C13_3";
    12 => "S3_3_C14_C9_4", "S3_3_C14_C13_4";
    13 => "S3_3_C14_C9_5", "S3_3_C14_C13_5";
    14 => "S3_3_C14_C9_6", "S3_3_C14_C13_6";
    15 => "S3_3_C14_C9_7", "S3_3_C14_C13_7";
    16 => "S3_3_C14_C10_0", "S3_3_C14_C14_0";
    17 => "S3_3_C14_C10_1", "S3_3_C14_C14_1";
    18 => "S3_3_C14_C10_2", "S3_3_C14_C14_2";
    19 => "S3_3_C14_C10_3", "S3_3_C14_C14_3";
    20 => "S3_3_C14_C10_4", "S3_3_C14_C14_4";
    21 => "S3_3_C14_C10_5", "S3_3_C14_C14_5";
    22 => "S3_3_C14_C10_6", "S3_3_C14_C14_6";
    23 => "S3_3_C14_C10_7", "S3_3_C14_C14_7";
    24 => "S3_3_C14_C11_0", "S3_3_C14_C15_0";
    25 => "S3_3_C14_C11_1", "S3_3_C14_C15_1";
    26 => "S3_3_C14_C11_2", "S3_3_C14_C15_2";
    27 => "S3_3_C14_C11_3", "S3_3_C14_C15_3";
    28 => "S3_3_C14_C11_4", "S3_3_C14_C15_4";
    29 => "S3_3_C14_C11_5", "S3_3_C14_C15_5";
    30 => "S3_3_C14_C11_6", "S3_3_C14_C15_6";
}

fn mrs_pmcr() -> u64 {
    let value: u64;
    // SAFETY: reading PMCR_EL0 at EL2 has no side effect.
    unsafe { core::arch::asm!("mrs {}, pmcr_el0", out(reg) value, options(nomem, nostack)) };
    value
}

fn enabled_counters() -> u64 {
    let value: u64;
    // SAFETY: reading PMCNTENSET_EL0 has no side effect.
    unsafe { core::arch::asm!("mrs {}, pmcntenset_el0", out(reg) value, options(nomem, nostack)) };
    value
}

fn enable_counter(n: u8) {
    // SAFETY: enables one event counter reserved for EL2; no memory is affected.
    unsafe {
        core::arch::asm!("msr pmcntenset_el0, {}", in(reg) 1u64 << n, options(nomem, nostack))
    };
}

/// Which counter to reserve on this CPU, if it can count retired instructions at EL2.
fn probe() -> Option<u8> {
    let pmceid0: u64;
    // PMUVer: 0 none, 0xF IMPLEMENTATION DEFINED.
    let version = ID_AA64DFR0_EL1.read(ID_AA64DFR0_EL1::PMUVer);
    if version == 0 || version == 0xf {
        return None;
    }
    // SAFETY: reading PMCEID0_EL0 has no side effect; the PMU exists.
    unsafe { core::arch::asm!("mrs {}, pmceid0_el0", out(reg) pmceid0, options(nomem, nostack)) };
    let counters = (mrs_pmcr() >> 11 & 0x1f) as u8;
    // Cells keep at least one counter (HPMN = 0 needs FEAT_HPMN0).
    (pmceid0 & 1 << INST_RETIRED != 0 && counters >= 2).then(|| counters - 1)
}

/// Sets up this CPU's PMU for running a vCPU: MDCR_EL2 with the reserved counter (or every
/// counter to the cells when there is none), and starts the measurement. Called whenever the
/// CPU loads a cell's EL2 state.
pub fn prepare_cpu(cpu: usize) {
    let mut counter = COUNTER.load(Ordering::Relaxed);
    if counter == NONE {
        if let Some(n) = probe() {
            counter = n;
            COUNTER.store(n, Ordering::Relaxed);
        }
    }
    // Every debug trap off; the PMU partitioned between EL2 and the cell.
    if counter == NONE {
        // HPMN = PMCR_EL0.N: every event counter to the cell.
        MDCR_EL2.write(MDCR_EL2::HPMN.val(mrs_pmcr() >> 11 & 0x1f));
    } else {
        MDCR_EL2.write(MDCR_EL2::HPMN.val(u64::from(counter)) + MDCR_EL2::HPME::SET);
    }
    barrier::isb(barrier::SY);
    if counter != NONE {
        write_type(counter, INST_RETIRED | FILTER_EL2_ONLY);
        enable_counter(counter);
        start(cpu);
    }
}

/// Restarts the measurement of `cpu` (it enters a cell after doing something that is not a
/// trap: booting, parking, switching cells).
pub fn start(cpu: usize) {
    let counter = COUNTER.load(Ordering::Relaxed);
    if counter == NONE {
        return;
    }
    super::HV.cpu(cpu).counters.start(read_counter(counter));
}

/// The trap of `cpu` is handled: charges its instructions to the reason counted.
#[inline]
pub fn measure(cpu: usize) {
    let counter = COUNTER.load(Ordering::Relaxed);
    if counter == NONE {
        return;
    }
    let counters = &super::HV.cpu(cpu).counters;
    let now = read_counter(counter);
    if !counters.measure(now, COUNTER_BITS) && enabled_counters() & 1 << counter == 0 {
        // Nothing counted since the last trap: the cell disabled the counter (through
        // PMCNTENCLR_EL0, as Linux does at boot). Counting resumes from here.
        enable_counter(counter);
        counters.start(now);
    }
}
