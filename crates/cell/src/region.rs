//! Memory regions and the arithmetic of lending them.

use core::fmt;

use cellvisor_config::{AddressRange, MemoryFlags, MemoryRegion};

/// Regions a cell can hold (the root cell's pieces included).
pub const MAX_REGIONS: usize = 64;

/// A cell's memory regions.
pub type Regions = heapless::Vec<Region, MAX_REGIONS>;

/// A memory region of a cell: `size` bytes of physical memory at `phys`, seen by the cell at
/// guest-physical `virt`.
///
/// A communication region (flag [`MemoryFlags::COMM_REGION`]) has no physical address of its
/// own (`phys` is 0): the hypervisor backs it with a page of its memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Region {
    /// Physical start.
    pub phys: u64,
    /// Guest-physical start.
    pub virt: u64,
    /// Size in bytes.
    pub size: u64,
    /// Access and role.
    pub flags: MemoryFlags,
}

impl Region {
    /// A region.
    pub const fn new(phys: u64, virt: u64, size: u64, flags: MemoryFlags) -> Self {
        Region {
            phys,
            virt,
            size,
            flags,
        }
    }

    /// The physical range.
    pub const fn phys_range(&self) -> AddressRange {
        AddressRange::new(self.phys, self.size)
    }

    /// The guest-physical range.
    pub const fn virt_range(&self) -> AddressRange {
        AddressRange::new(self.virt, self.size)
    }

    /// Whether this is the cell's communication region.
    pub const fn is_comm_region(&self) -> bool {
        self.flags.contains(MemoryFlags::COMM_REGION)
    }

    /// Whether the region stays mapped in the root cell while the cell exists.
    pub const fn is_root_shared(&self) -> bool {
        self.flags.contains(MemoryFlags::ROOTSHARED)
    }

    /// Whether the region is device memory.
    pub const fn is_io(&self) -> bool {
        self.flags.contains(MemoryFlags::IO)
    }

    /// Whether the region stands for physical memory (not the communication region, not
    /// empty).
    pub const fn has_phys(&self) -> bool {
        !self.is_comm_region() && self.size != 0
    }

    /// Whether the root cell gives the region up while the cell exists: physical memory
    /// that is not shared with the root cell.
    pub const fn is_lent(&self) -> bool {
        self.has_phys() && !self.is_root_shared()
    }

    /// Whether the physical address lies in the region (never for a communication region).
    pub const fn contains_phys(&self, phys: u64) -> bool {
        self.has_phys() && self.phys_range().contains(phys)
    }
}

impl From<MemoryRegion> for Region {
    fn from(region: MemoryRegion) -> Self {
        Region::new(
            region.phys_start,
            region.virt_start,
            region.size,
            region.flags,
        )
    }
}

/// `[0x7f000000, 0x80000000) -> 0x0`: physical range and guest-physical start.
impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {:#x}", self.phys_range(), self.virt)
    }
}

/// More pieces than [`MAX_REGIONS`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TooManyPieces;

/// What remains of `original` once every range of `lent` is taken out: each original region
/// becomes the pieces that remain of it, in address order, at its place in the list, with
/// its flags and its guest-physical offset.
///
/// The root cell's region list is always computed this way from the list it had at boot, so
/// once every cell is gone it is that list again, byte for byte; no merging heuristics.
pub(crate) fn subtract(
    original: &[Region],
    lent: impl Iterator<Item = AddressRange> + Clone,
) -> Result<Regions, TooManyPieces> {
    let mut pieces = Regions::new();
    for region in original {
        let start = u128::from(region.phys);
        let end = region.phys_range().end();
        let mut cursor = start;
        while cursor < end {
            // The lent range that overlaps what is left and starts first.
            let next = lent
                .clone()
                .filter(|l| l.size != 0 && u128::from(l.start) < end && l.end() > cursor)
                .min_by_key(|l| l.start);
            let piece_end = next.map_or(end, |l| u128::from(l.start).max(cursor));
            if piece_end > cursor {
                // Both fit in u64: they lie inside `region`, whose end was checked.
                let offset = (cursor - start) as u64;
                let piece = Region::new(
                    region.phys + offset,
                    region.virt.wrapping_add(offset),
                    (piece_end - cursor) as u64,
                    region.flags,
                );
                pieces.push(piece).map_err(|_| TooManyPieces)?;
            }
            cursor = next.map_or(end, |l| l.end().max(cursor));
        }
    }
    Ok(pieces)
}

/// Whether `[start, end)` is covered by the union of `ranges`.
pub(crate) fn covered(
    range: AddressRange,
    ranges: impl Iterator<Item = AddressRange> + Clone,
) -> bool {
    let end = range.end();
    let mut cursor = u128::from(range.start);
    while cursor < end {
        let reach = ranges
            .clone()
            .filter(|r| u128::from(r.start) <= cursor && cursor < r.end())
            .map(|r| r.end())
            .max();
        match reach {
            Some(r) => cursor = r,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: MemoryFlags = MemoryFlags::READ.union(MemoryFlags::WRITE);

    fn range(start: u64, size: u64) -> AddressRange {
        AddressRange::new(start, size)
    }

    #[test]
    fn subtract_splits_and_restores() {
        let original = [
            Region::new(0x4000_0000, 0x4000_0000, 0x4000_0000, RAM),
            Region::new(0x900_0000, 0x900_0000, 0x1000, MemoryFlags::IO),
        ];
        assert_eq!(
            subtract(&original, [].into_iter()).unwrap().as_slice(),
            &original
        );

        let end = [range(0x7f00_0000, 0x100_0000)];
        let pieces = subtract(&original, end.into_iter()).unwrap();
        assert_eq!(
            pieces.as_slice(),
            &[
                Region::new(0x4000_0000, 0x4000_0000, 0x3f00_0000, RAM),
                original[1]
            ]
        );

        let middle = [range(0x5000_0000, 0x1000), range(0x900_0000, 0x1000)];
        let pieces = subtract(&original, middle.into_iter()).unwrap();
        assert_eq!(
            pieces.as_slice(),
            &[
                Region::new(0x4000_0000, 0x4000_0000, 0x1000_0000, RAM),
                Region::new(0x5000_1000, 0x5000_1000, 0x2fff_f000, RAM),
            ]
        );

        let whole = [range(0, u64::MAX)];
        assert!(subtract(&original, whole.into_iter()).unwrap().is_empty());
    }

    #[test]
    fn subtract_keeps_the_guest_offset() {
        let original = [Region::new(0x8000_0000, 0x1000, 0x4000, RAM)];
        let pieces = subtract(&original, [range(0x8000_1000, 0x1000)].into_iter()).unwrap();
        assert_eq!(
            pieces.as_slice(),
            &[
                Region::new(0x8000_0000, 0x1000, 0x1000, RAM),
                Region::new(0x8000_2000, 0x3000, 0x2000, RAM),
            ]
        );
    }

    #[test]
    fn subtract_reports_too_many_pieces() {
        let original = [Region::new(0, 0, 0x1000_0000, RAM)];
        let holes = (0..MAX_REGIONS as u64).map(|i| range(0x2000 * i + 0x1000, 0x1000));
        assert_eq!(subtract(&original, holes), Err(TooManyPieces));
        let holes = (0..MAX_REGIONS as u64 - 1).map(|i| range(0x2000 * i + 0x1000, 0x1000));
        assert_eq!(subtract(&original, holes).unwrap().len(), MAX_REGIONS);
    }

    #[test]
    fn coverage() {
        let ranges = [range(0x1000, 0x1000), range(0x2000, 0x1000)];
        assert!(covered(range(0x1000, 0x2000), ranges.into_iter()));
        assert!(covered(range(0x1800, 0x1000), ranges.into_iter()));
        assert!(!covered(range(0x1000, 0x3000), ranges.into_iter()));
        assert!(!covered(range(0, 0x2000), ranges.into_iter()));
    }
}
