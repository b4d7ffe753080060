//! Inter-processor interrupts limited to the sender's cell: [`route`].
//!
//! The hypervisor traps every ICR write (the x2APIC MSR, or the xAPIC register page) and sends
//! the IPI itself, to physical destinations it has checked:
//!
//! - a shorthand ("all", "all but self") and a broadcast destination mean the cell's CPUs;
//! - a physical destination, and an x2APIC logical one (fixed by the hardware from the APIC
//!   ID), must name CPUs of the cell: a foreign CPU is a [`IpiViolation::ForeignCpu`];
//! - an xAPIC logical destination is matched against the cell's own CPUs only: xAPIC logical
//!   IDs are written by each cell's software, and two cells' kernels may well both call their
//!   first CPU 1;
//! - SMI, the reserved modes and ExtINT are never sent ([`IpiViolation::DeliveryMode`]);
//! - INIT and start-up IPIs become requests the hypervisor serves for the cell's own CPUs
//!   (CPU hotplug), never an INIT or SIPI on the wire;
//! - what hardware ignores is ignored ([`Route::Ignore`]): an INIT level de-assert, a fixed
//!   vector below 16 (an "illegal vector" error on hardware), a destination no CPU has.

use core::fmt;

use cellvisor_config::CpuSet;

use crate::icr::{DeliveryMode, Icr, Shorthand};
use crate::topology::Topology;
use crate::ApicMode;

/// What the hypervisor sends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IpiKind {
    /// An interrupt with this vector (a lowest-priority IPI becomes this, to one target).
    Fixed(u8),
    /// A non-maskable interrupt.
    Nmi,
    /// An INIT request for the targets: each vCPU is reset and waits for a start-up IPI.
    Init,
    /// A start-up request: each target waiting after INIT starts in real mode at
    /// `vector << 12`.
    Startup(u8),
}

/// Why a write of the ICR sends nothing, harmlessly (as the hardware would).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ignored {
    /// INIT level de-assert (82489DX only).
    InitDeassert,
    /// A fixed or lowest-priority vector below 16.
    IllegalVector(u8),
    /// No CPU of the cell is addressed (a physical ID no CPU has, a logical destination no
    /// cell CPU accepts, "all but self" in a one-CPU cell).
    NoTarget,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InitDeassert => f.write_str("an INIT level de-assert"),
            Self::IllegalVector(v) => write!(f, "illegal vector {v:#x}"),
            Self::NoTarget => f.write_str("no CPU of the cell is addressed"),
        }
    }
}

/// What to do with one ICR write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    /// Send `kind` to each CPU of `cpus` (all of them the sender's cell's).
    Send {
        /// What.
        kind: IpiKind,
        /// To whom: CPU indices.
        cpus: CpuSet,
    },
    /// Nothing to send.
    Ignore(Ignored),
}

/// An ICR write that breaks the partition. Nothing was sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IpiViolation {
    /// The destination names a CPU of another cell (CPU index).
    ForeignCpu(u32),
    /// A delivery mode no cell may send (SMI, the reserved remote read, ExtINT).
    DeliveryMode(DeliveryMode),
}

impl fmt::Display for IpiViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ForeignCpu(cpu) => write!(f, "CPU {cpu} belongs to another cell"),
            Self::DeliveryMode(mode) => write!(f, "delivery mode {mode} is not allowed"),
        }
    }
}

impl core::error::Error for IpiViolation {}

/// Decides what CPU `sender` of the cell owning `cell_cpus` may send for `icr`.
pub fn route(
    icr: &Icr,
    sender: u32,
    cell_cpus: &CpuSet,
    topology: &Topology,
) -> Result<Route, IpiViolation> {
    let delivery = icr.delivery();
    let kind = match delivery {
        DeliveryMode::Smi | DeliveryMode::RemoteRead | DeliveryMode::ExtInt => {
            return Err(IpiViolation::DeliveryMode(delivery));
        }
        DeliveryMode::Init if icr.is_init_deassert() => {
            return Ok(Route::Ignore(Ignored::InitDeassert));
        }
        DeliveryMode::Fixed | DeliveryMode::LowestPriority if icr.vector() < 16 => {
            return Ok(Route::Ignore(Ignored::IllegalVector(icr.vector())));
        }
        DeliveryMode::Fixed | DeliveryMode::LowestPriority => IpiKind::Fixed(icr.vector()),
        DeliveryMode::Nmi => IpiKind::Nmi,
        DeliveryMode::Init => IpiKind::Init,
        DeliveryMode::Startup => IpiKind::Startup(icr.vector()),
    };
    let cpus = match icr.shorthand() {
        Shorthand::ToSelf => CpuSet::from_cpus([sender]),
        Shorthand::AllIncludingSelf => *cell_cpus,
        Shorthand::AllExcludingSelf => {
            let mut cpus = *cell_cpus;
            cpus.remove(sender);
            cpus
        }
        Shorthand::None if icr.is_broadcast() => *cell_cpus,
        Shorthand::None if !icr.is_logical() => match topology.cpu_of(icr.destination()) {
            Some(cpu) if cell_cpus.contains(cpu) => CpuSet::from_cpus([cpu]),
            Some(cpu) => return Err(IpiViolation::ForeignCpu(cpu)),
            None => CpuSet::new(),
        },
        Shorthand::None => match icr.mode() {
            ApicMode::X2Apic => {
                let all = topology.logical_targets(&topology.all(), icr.mode(), icr.destination());
                if let Some(foreign) = all.difference(cell_cpus).iter().next() {
                    return Err(IpiViolation::ForeignCpu(foreign));
                }
                all
            }
            ApicMode::XApic => topology.logical_targets(cell_cpus, icr.mode(), icr.destination()),
        },
    };
    if cpus.is_empty() {
        return Ok(Route::Ignore(Ignored::NoTarget));
    }
    // Lowest priority: the arbitration is the hardware's to choose; the first CPU is as good
    // as any (Intel SDM Vol. 3A §11.6.2.4 leaves it model specific).
    let cpus = match delivery {
        DeliveryMode::LowestPriority => CpuSet::from_cpus(cpus.iter().next()),
        _ => cpus,
    };
    Ok(Route::Send { kind, cpus })
}
