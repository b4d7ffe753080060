//! Which cell owns which interrupt: [`IntId`], [`IrqOwnership`].
//!
//! SPIs (INTIDs 32..1020, IHI 0069 §2.2.1) belong to at most one cell. SGIs and PPIs (0..32)
//! are banked per CPU: whichever cell runs on a CPU owns that CPU's copies, except the ones the
//! hypervisor keeps for itself (its IPIs, the maintenance interrupt), which no cell owns.

use core::fmt;

use crate::cpu::CellId;

/// A physical interrupt ID (INTID).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntId(u32);

impl IntId {
    /// The first PPI (SGIs are 0..16).
    pub const PPI_START: u32 = 16;
    /// The first SPI (PPIs are 16..32).
    pub const SPI_START: u32 = 32;
    /// One past the last SPI: 1020..1024 are special INTIDs (IHI 0069 §2.2.1,
    /// IHI 0048B §3.2.5).
    pub const SPI_END: u32 = 1020;

    /// Wraps an INTID (any value; the predicates say what it is).
    pub const fn new(intid: u32) -> Self {
        Self(intid)
    }

    /// The INTID.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Whether this is an SGI (0..16).
    pub const fn is_sgi(self) -> bool {
        self.0 < Self::PPI_START
    }

    /// Whether this is an SGI or PPI, banked per CPU (0..32).
    pub const fn is_private(self) -> bool {
        self.0 < Self::SPI_START
    }

    /// Whether this is an SPI (32..1020).
    pub const fn is_spi(self) -> bool {
        self.0 >= Self::SPI_START && self.0 < Self::SPI_END
    }
}

impl fmt::Debug for IntId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntId({})", self.0)
    }
}

/// Why an ownership change was refused. Nothing changed when one is returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OwnershipError {
    /// Only SPIs can be given to a cell; SGIs and PPIs follow the CPUs.
    NotSpi(IntId),
    /// The SPI is beyond what the distributor implements (`GICD_TYPER.ITLinesNumber`).
    NotImplemented(IntId),
    /// The SPI already belongs to a cell (possibly the same one, listed twice).
    AlreadyOwned {
        /// The interrupt.
        irq: IntId,
        /// Its current owner.
        owner: CellId,
    },
    /// The cell does not own the SPI it tried to give back.
    NotOwner {
        /// The interrupt.
        irq: IntId,
        /// The cell that asked.
        cell: CellId,
    },
}

impl fmt::Display for OwnershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSpi(irq) => write!(
                f,
                "interrupt {} is an SGI or PPI: only SPIs change owner",
                irq.get()
            ),
            Self::NotImplemented(irq) => write!(
                f,
                "SPI {} is beyond what the distributor implements",
                irq.get()
            ),
            Self::AlreadyOwned { irq, owner } => {
                write!(
                    f,
                    "SPI {} belongs to cell {} already",
                    irq.get(),
                    owner.get()
                )
            }
            Self::NotOwner { irq, cell } => {
                write!(
                    f,
                    "SPI {} is not cell {}'s to give back",
                    irq.get(),
                    cell.get()
                )
            }
        }
    }
}

impl core::error::Error for OwnershipError {}

const SPI_COUNT: usize = (IntId::SPI_END - IntId::SPI_START) as usize;

/// The owner of every SPI, plus the SGIs/PPIs the hypervisor keeps.
///
/// Fixed size (about 4 KiB), no allocation; one per system, guarded by the same lock as the
/// distributor (see [`DistributorV2`](crate::v2::DistributorV2)).
#[derive(Clone)]
pub struct IrqOwnership {
    owners: [Option<CellId>; SPI_COUNT],
    implemented: u32,
    reserved_private: u32,
}

impl IrqOwnership {
    /// No SPI owned, no private interrupt reserved; `implemented` is the number of INTIDs the
    /// distributor implements, `32 * (GICD_TYPER.ITLinesNumber + 1)` (IHI 0048B §4.3.2,
    /// IHI 0069 §12.9.38), capped at 1020.
    pub fn new(implemented: u32) -> Self {
        Self {
            owners: [None; SPI_COUNT],
            implemented: implemented.min(IntId::SPI_END),
            reserved_private: 0,
        }
    }

    /// The number of implemented INTIDs (SPIs above are never owned).
    pub fn implemented(&self) -> u32 {
        self.implemented
    }

    fn slot(&self, irq: IntId) -> Result<usize, OwnershipError> {
        if !irq.is_spi() {
            return Err(OwnershipError::NotSpi(irq));
        }
        if irq.get() >= self.implemented {
            return Err(OwnershipError::NotImplemented(irq));
        }
        Ok((irq.get() - IntId::SPI_START) as usize)
    }

    /// Gives the SPI `irq` to `cell`.
    pub fn assign(&mut self, cell: CellId, irq: IntId) -> Result<(), OwnershipError> {
        let slot = self.slot(irq)?;
        if let Some(owner) = self.owners[slot] {
            return Err(OwnershipError::AlreadyOwned { irq, owner });
        }
        self.owners[slot] = Some(cell);
        Ok(())
    }

    /// Gives all of `irqs` to `cell`, or none of them (at cell creation).
    pub fn assign_all(&mut self, cell: CellId, irqs: &[IntId]) -> Result<(), OwnershipError> {
        for (done, &irq) in irqs.iter().enumerate() {
            if let Err(error) = self.assign(cell, irq) {
                for &undo in &irqs[..done] {
                    if let Ok(slot) = self.slot(undo) {
                        self.owners[slot] = None;
                    }
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Takes the SPI `irq` back from `cell`.
    pub fn release(&mut self, cell: CellId, irq: IntId) -> Result<(), OwnershipError> {
        let slot = self.slot(irq)?;
        if self.owners[slot] != Some(cell) {
            return Err(OwnershipError::NotOwner { irq, cell });
        }
        self.owners[slot] = None;
        Ok(())
    }

    /// Takes every SPI back from `cell` (at cell destruction); returns how many it had.
    pub fn release_cell(&mut self, cell: CellId) -> usize {
        let mut count = 0;
        for owner in &mut self.owners {
            if *owner == Some(cell) {
                *owner = None;
                count += 1;
            }
        }
        count
    }

    /// Moves all of `irqs` from `from` to `to`, or none of them (root cell → new cell at
    /// creation, and back at destruction).
    pub fn transfer(
        &mut self,
        from: CellId,
        to: CellId,
        irqs: &[IntId],
    ) -> Result<(), OwnershipError> {
        for &irq in irqs {
            if self.owner(irq) != Some(from) {
                return match self.owner(irq) {
                    Some(owner) if owner != from => {
                        Err(OwnershipError::AlreadyOwned { irq, owner })
                    }
                    _ => self
                        .slot(irq)
                        .and(Err(OwnershipError::NotOwner { irq, cell: from })),
                };
            }
        }
        for &irq in irqs {
            if let Ok(slot) = self.slot(irq) {
                self.owners[slot] = Some(to);
            }
        }
        Ok(())
    }

    /// Keeps the SGI or PPI `irq` for the hypervisor on every CPU: no cell can see or change
    /// it. Returns `false` for an SPI.
    pub fn reserve_private(&mut self, irq: IntId) -> bool {
        if irq.is_private() {
            self.reserved_private |= 1 << irq.get();
            true
        } else {
            false
        }
    }

    /// The owner of the SPI `irq` (`None` for unowned, private or unimplemented INTIDs).
    pub fn owner(&self, irq: IntId) -> Option<CellId> {
        self.slot(irq).ok().and_then(|slot| self.owners[slot])
    }

    /// Whether `cell`, running on one of its CPUs, may see and change `irq` there: an SPI it
    /// owns, or an SGI/PPI the hypervisor did not reserve.
    pub fn owns(&self, cell: CellId, irq: IntId) -> bool {
        if irq.is_private() {
            self.reserved_private & (1 << irq.get()) == 0
        } else {
            self.owner(irq) == Some(cell)
        }
    }

    /// The SPIs `cell` owns, in increasing order.
    pub fn spis_of(&self, cell: CellId) -> impl Iterator<Item = IntId> + '_ {
        self.owners
            .iter()
            .enumerate()
            .filter(move |(_, owner)| **owner == Some(cell))
            .map(|(slot, _)| IntId::new(slot as u32 + IntId::SPI_START))
    }
}

impl fmt::Debug for IrqOwnership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (slot, owner) in self.owners.iter().enumerate() {
            if let Some(owner) = owner {
                map.entry(&(slot as u32 + IntId::SPI_START), &owner.get());
            }
        }
        map.finish()?;
        write!(f, " reserved_private={:#x}", self.reserved_private)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const ROOT: CellId = CellId::new(0);
    const CELL: CellId = CellId::new(1);

    #[test]
    fn double_assignment_is_refused() {
        let mut own = IrqOwnership::new(288);
        own.assign(ROOT, IntId::new(40)).unwrap();
        assert_eq!(
            own.assign(CELL, IntId::new(40)),
            Err(OwnershipError::AlreadyOwned {
                irq: IntId::new(40),
                owner: ROOT
            })
        );
        assert_eq!(own.owner(IntId::new(40)), Some(ROOT));
    }

    #[test]
    fn assign_all_is_all_or_nothing() {
        let mut own = IrqOwnership::new(288);
        own.assign(ROOT, IntId::new(50)).unwrap();
        let irqs = [IntId::new(48), IntId::new(49), IntId::new(50)];
        assert!(own.assign_all(CELL, &irqs).is_err());
        assert_eq!(own.spis_of(CELL).count(), 0);
        // The same INTID twice in one request is a double assignment too.
        let twice = [IntId::new(60), IntId::new(60)];
        assert_eq!(
            own.assign_all(CELL, &twice),
            Err(OwnershipError::AlreadyOwned {
                irq: IntId::new(60),
                owner: CELL
            })
        );
        assert_eq!(own.owner(IntId::new(60)), None);
        own.assign_all(CELL, &irqs[..2]).unwrap();
        assert_eq!(
            own.spis_of(CELL).collect::<Vec<_>>(),
            [IntId::new(48), IntId::new(49)]
        );
    }

    #[test]
    fn only_implemented_spis_can_be_owned() {
        let mut own = IrqOwnership::new(64);
        assert_eq!(
            own.assign(CELL, IntId::new(27)),
            Err(OwnershipError::NotSpi(IntId::new(27)))
        );
        assert_eq!(
            own.assign(CELL, IntId::new(64)),
            Err(OwnershipError::NotImplemented(IntId::new(64)))
        );
        assert_eq!(
            own.assign(CELL, IntId::new(1020)),
            Err(OwnershipError::NotSpi(IntId::new(1020)))
        );
        own.assign(CELL, IntId::new(63)).unwrap();
    }

    #[test]
    fn release_and_transfer() {
        let mut own = IrqOwnership::new(1020);
        own.assign_all(ROOT, &[IntId::new(33), IntId::new(1019)])
            .unwrap();
        assert_eq!(
            own.release(CELL, IntId::new(33)),
            Err(OwnershipError::NotOwner {
                irq: IntId::new(33),
                cell: CELL
            })
        );
        assert!(own
            .transfer(ROOT, CELL, &[IntId::new(33), IntId::new(34)])
            .is_err());
        assert_eq!(own.owner(IntId::new(33)), Some(ROOT));
        own.transfer(ROOT, CELL, &[IntId::new(33)]).unwrap();
        assert_eq!(own.owner(IntId::new(33)), Some(CELL));
        assert_eq!(own.release_cell(CELL), 1);
        own.release(ROOT, IntId::new(1019)).unwrap();
        assert_eq!(own.owner(IntId::new(1019)), None);
    }

    #[test]
    fn private_interrupts_follow_the_cpu_unless_reserved() {
        let mut own = IrqOwnership::new(64);
        assert!(own.owns(CELL, IntId::new(27)) && own.owns(ROOT, IntId::new(27)));
        assert!(own.reserve_private(IntId::new(25)));
        assert!(!own.reserve_private(IntId::new(40)));
        assert!(!own.owns(CELL, IntId::new(25)));
        assert!(!own.owns(CELL, IntId::new(40)));
        assert!(!own.owns(CELL, IntId::new(1023)));
    }
}
