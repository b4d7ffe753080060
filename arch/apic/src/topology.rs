//! The machine's CPUs as their local APICs see them: [`Topology`].
//!
//! A CPU is named by its index in the configuration's CPU list (as everywhere in cellvisor);
//! its local APIC by its APIC ID, which the firmware assigns (ACPI MADT). Logical IDs: in
//! x2APIC mode the hardware derives them from the APIC ID (cluster = ID bits 31:4, one bit of
//! 16 for ID bits 3:0; Intel SDM Vol. 3A §11.12.10.2); in xAPIC mode software writes them
//! (LDR, bits 31:24) and chooses the flat or cluster model (DFR bits 31:28; §11.6.2.2), so the
//! hypervisor keeps what each CPU's cell wrote.

use core::fmt;

use cellvisor_config::CpuSet;

use crate::icr::ApicMode;

/// CPUs a [`Topology`] holds: the core's limit.
pub const MAX_CPUS: usize = 64;

/// Why a topology could not be built. Nothing is kept.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TopologyError {
    /// More CPUs than [`MAX_CPUS`].
    TooManyCpus(usize),
    /// Two CPUs with the same APIC ID.
    DuplicateApicId {
        /// The ID.
        apic_id: u32,
        /// The second CPU with it.
        cpu: u32,
    },
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyCpus(n) => write!(f, "{n} CPUs, at most {MAX_CPUS} are supported"),
            Self::DuplicateApicId { apic_id, cpu } => {
                write!(
                    f,
                    "CPU {cpu}: APIC ID {apic_id:#x} is another CPU's already"
                )
            }
        }
    }
}

impl core::error::Error for TopologyError {}

/// What an xAPIC CPU's software set as its logical destination.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct XApicLogical {
    /// LDR bits 31:24.
    id: u8,
    /// DFR model: flat (0b1111) rather than cluster (0b0000).
    cluster: bool,
}

/// CPU index ↔ APIC ID, and each CPU's xAPIC logical ID as its cell set it.
#[derive(Clone, Debug)]
pub struct Topology {
    apic_ids: heapless::Vec<u32, MAX_CPUS>,
    logical: [XApicLogical; MAX_CPUS],
}

impl Topology {
    /// The CPUs' APIC IDs in CPU order. Logical IDs start at 0, flat model (the reset values).
    pub fn new(apic_ids: &[u32]) -> Result<Self, TopologyError> {
        let mut ids = heapless::Vec::new();
        for (cpu, &apic_id) in apic_ids.iter().enumerate() {
            if ids.contains(&apic_id) {
                return Err(TopologyError::DuplicateApicId {
                    apic_id,
                    cpu: cpu as u32,
                });
            }
            ids.push(apic_id)
                .map_err(|_| TopologyError::TooManyCpus(apic_ids.len()))?;
        }
        Ok(Self {
            apic_ids: ids,
            logical: [XApicLogical::default(); MAX_CPUS],
        })
    }

    /// How many CPUs.
    pub fn len(&self) -> usize {
        self.apic_ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.apic_ids.is_empty()
    }

    /// CPU `cpu`'s APIC ID.
    pub fn apic_id(&self, cpu: u32) -> Option<u32> {
        self.apic_ids.get(cpu as usize).copied()
    }

    /// The CPU whose APIC ID is `apic_id`.
    pub fn cpu_of(&self, apic_id: u32) -> Option<u32> {
        self.apic_ids
            .iter()
            .position(|&id| id == apic_id)
            .map(|cpu| cpu as u32)
    }

    /// Every CPU.
    pub fn all(&self) -> CpuSet {
        CpuSet::from_cpus(0..self.apic_ids.len() as u32)
    }

    /// Records an xAPIC LDR write of CPU `cpu` (the logical ID is bits 31:24).
    pub fn set_xapic_ldr(&mut self, cpu: u32, ldr: u32) {
        if let Some(logical) = self.logical.get_mut(cpu as usize) {
            logical.id = (ldr >> 24) as u8;
        }
    }

    /// Records an xAPIC DFR write of CPU `cpu`: model bits 31:28, 0b1111 flat, 0b0000 cluster
    /// (other values are reserved and read as flat here).
    pub fn set_xapic_dfr(&mut self, cpu: u32, dfr: u32) {
        if let Some(logical) = self.logical.get_mut(cpu as usize) {
            logical.cluster = dfr >> 28 == 0;
        }
    }

    /// Resets CPU `cpu`'s xAPIC logical ID to its power-on state (ID 0, flat), as INIT does:
    /// when the CPU changes cells, the next cell must not be addressed by the last one's ID.
    pub fn reset_logical(&mut self, cpu: u32) {
        if let Some(logical) = self.logical.get_mut(cpu as usize) {
            *logical = XApicLogical::default();
        }
    }

    /// CPU `cpu`'s x2APIC logical ID: cluster (APIC ID bits 31:4) in bits 31:16, one bit for
    /// APIC ID bits 3:0 in bits 15:0.
    pub fn x2apic_logical_id(&self, cpu: u32) -> Option<u32> {
        self.apic_id(cpu)
            .map(|id| (id >> 4) << 16 | 1 << (id & 0xf))
    }

    /// Whether CPU `cpu` accepts a logical destination `destination` in `mode`.
    pub fn accepts_logical(&self, cpu: u32, mode: ApicMode, destination: u32) -> bool {
        match mode {
            ApicMode::X2Apic => self
                .x2apic_logical_id(cpu)
                .is_some_and(|id| id >> 16 == destination >> 16 && id & destination & 0xffff != 0),
            ApicMode::XApic => {
                let Some(logical) = self.logical.get(cpu as usize) else {
                    return false;
                };
                let destination = destination as u8;
                if logical.cluster {
                    logical.id >> 4 == destination >> 4 && logical.id & destination & 0xf != 0
                } else {
                    logical.id & destination != 0
                }
            }
        }
    }

    /// The CPUs of `among` that accept logical destination `destination`.
    pub fn logical_targets(&self, among: &CpuSet, mode: ApicMode, destination: u32) -> CpuSet {
        CpuSet::from_cpus(
            among
                .iter()
                .filter(|&cpu| self.accepts_logical(cpu, mode, destination)),
        )
    }
}
