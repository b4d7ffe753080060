//! Which cell owns which PCI function: [`Devices`].

use core::fmt;

use cellvisor_cell::CellId;
use cellvisor_config::Bdf;

/// Functions that can be given to cells at once (all cells together).
pub const MAX_ASSIGNED: usize = 128;

/// Bytes of BAR sizes kept per function: six BARs and the expansion ROM.
pub(crate) const BARS: usize = 7;

/// One function given to a cell.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Assigned {
    pub bdf: Bdf,
    pub cell: CellId,
    /// A bridge: its header is read-only for the cell.
    pub bridge: bool,
    /// Each BAR's size mask as the hardware answered the sizing write (0: not implemented),
    /// index 6 the expansion ROM.
    pub bar_masks: [u32; BARS],
    /// Which BARs the cell is sizing: the next read returns the mask.
    pub sizing: u8,
}

/// Why an assignment was refused. Nothing changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeviceError {
    /// The function is another cell's already.
    Taken {
        /// The function.
        bdf: Bdf,
        /// Its owner.
        owner: CellId,
    },
    /// The function does not answer (vendor ID 0xffff).
    Absent(Bdf),
    /// More functions than [`MAX_ASSIGNED`] would be assigned.
    Full,
    /// The root cell cannot be given functions: it has every function no other cell has.
    ToRoot,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Taken { bdf, owner } => {
                write!(f, "PCI {bdf} belongs to cell {} already", owner.0)
            }
            Self::Absent(bdf) => write!(f, "PCI {bdf}: no such function (vendor ID 0xffff)"),
            Self::Full => write!(f, "more than {MAX_ASSIGNED} PCI functions given to cells"),
            Self::ToRoot => f.write_str("PCI functions are the root cell's unless given to a cell"),
        }
    }
}

impl core::error::Error for DeviceError {}

/// The functions given to cells; every other function is the root cell's.
#[derive(Clone, Debug, Default)]
pub struct Devices {
    pub(crate) assigned: heapless::Vec<Assigned, MAX_ASSIGNED>,
}

impl Devices {
    /// No function given to any cell.
    pub const fn new() -> Self {
        Self {
            assigned: heapless::Vec::new(),
        }
    }

    /// The cell `bdf` belongs to.
    pub fn owner(&self, bdf: Bdf) -> CellId {
        self.find(bdf).map_or(CellId::ROOT, |a| a.cell)
    }

    /// The functions of `cell` (none listed for the root cell, which has the rest).
    pub fn of(&self, cell: CellId) -> impl Iterator<Item = Bdf> + '_ {
        self.assigned
            .iter()
            .filter(move |a| a.cell == cell)
            .map(|a| a.bdf)
    }

    pub(crate) fn find(&self, bdf: Bdf) -> Option<&Assigned> {
        self.assigned.iter().find(|a| a.bdf == bdf)
    }

    pub(crate) fn find_mut(&mut self, bdf: Bdf) -> Option<&mut Assigned> {
        self.assigned.iter_mut().find(|a| a.bdf == bdf)
    }
}
