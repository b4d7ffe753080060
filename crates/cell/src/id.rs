//! Cell ids.

use core::fmt;

/// A cell's id: its slot in the registry. The root cell is 0; a new cell gets the lowest
/// free id, so ids of destroyed cells are used again.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct CellId(pub u32);

impl CellId {
    /// The root cell.
    pub const ROOT: CellId = CellId(0);

    /// Whether this is the root cell.
    pub const fn is_root(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
