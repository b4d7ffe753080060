//! A physical memory map in the e820 sense: sorted, non-overlapping ranges, each of one
//! [`Kind`], built by overriding ranges of a firmware's map.

use core::fmt;

/// How many ranges a map holds: the zero page's e820 table has 128 entries.
pub const MAX_RANGES: usize = 128;

/// What a range of physical memory is (the e820 and Multiboot type numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Usable RAM (1).
    Ram,
    /// Reserved: firmware, hypervisor or another cell's memory; never RAM to the kernel (2).
    Reserved,
    /// ACPI tables the kernel may reclaim once it has read them (3).
    AcpiReclaimable,
    /// ACPI non-volatile storage, kept across sleep (4).
    AcpiNvs,
    /// Bad memory (5).
    Unusable,
    /// Any other type number, passed on as it is.
    Other(u32),
}

impl Kind {
    /// The kind of an e820 or Multiboot type number.
    pub const fn from_type(number: u32) -> Self {
        match number {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Unusable,
            other => Self::Other(other),
        }
    }

    /// Its e820 type number.
    pub const fn type_number(self) -> u32 {
        match self {
            Self::Ram => 1,
            Self::Reserved => 2,
            Self::AcpiReclaimable => 3,
            Self::AcpiNvs => 4,
            Self::Unusable => 5,
            Self::Other(other) => other,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ram => f.write_str("RAM"),
            Self::Reserved => f.write_str("reserved"),
            Self::AcpiReclaimable => f.write_str("ACPI data"),
            Self::AcpiNvs => f.write_str("ACPI NVS"),
            Self::Unusable => f.write_str("unusable"),
            Self::Other(number) => write!(f, "type {number}"),
        }
    }
}

/// One range of a [`MemoryMap`]: `size` bytes from `start`, never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// The first byte.
    pub start: u64,
    /// Its length in bytes.
    pub size: u64,
    /// What it is.
    pub kind: Kind,
}

impl Range {
    /// The byte after the range (saturating at the top of the address space, which a range
    /// built by [`MemoryMap::set`] never reaches past).
    pub const fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }

    /// Whether the range holds the `size` bytes at `start`.
    pub const fn contains(&self, start: u64, size: u64) -> bool {
        match start.checked_add(size) {
            Some(end) => start >= self.start && end <= self.end(),
            None => false,
        }
    }
}

/// Why a map cannot take a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The range runs past the top of the 64-bit address space.
    Overflow {
        /// Its start.
        start: u64,
        /// Its size.
        size: u64,
    },
    /// The change would need more than [`MAX_RANGES`] ranges.
    Full,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overflow { start, size } => write!(
                f,
                "the range of {size:#x} bytes at {start:#x} runs past the top of the address space"
            ),
            Self::Full => write!(f, "the memory map would need more than {MAX_RANGES} ranges"),
        }
    }
}

impl core::error::Error for MapError {}

/// A physical memory map: sorted, non-overlapping, non-empty ranges, neighbours of the same
/// kind merged, at most [`MAX_RANGES`]. Addresses in no range are holes.
///
/// Built from a firmware's map (in any order, overlaps resolved by the later entry) and then
/// changed with [`set`](Self::set) and [`remove`](Self::remove), for example to make the
/// hypervisor's memory [`Kind::Reserved`] before the map is handed to the root cell's kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryMap {
    ranges: heapless::Vec<Range, MAX_RANGES>,
}

impl MemoryMap {
    /// An empty map: all holes.
    pub const fn new() -> Self {
        Self {
            ranges: heapless::Vec::new(),
        }
    }

    /// The ranges, sorted by address.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// The kind of the byte at `address`, `None` in a hole.
    pub fn kind_at(&self, address: u64) -> Option<Kind> {
        self.ranges
            .iter()
            .find(|range| range.start <= address && address < range.end())
            .map(|range| range.kind)
    }

    /// Whether the `size` bytes at `start` are all of `kind` (a zero size never is).
    pub fn is_all(&self, start: u64, size: u64, kind: Kind) -> bool {
        let Some(end) = start.checked_add(size) else {
            return false;
        };
        if size == 0 {
            return false;
        }
        let mut at = start;
        for range in self.ranges.iter().filter(|range| range.end() > start) {
            if range.start > at || range.kind != kind {
                return false;
            }
            at = range.end();
            if at >= end {
                return true;
            }
        }
        false
    }

    /// Makes the `size` bytes at `start` of `kind`, over whatever they were. An empty range
    /// changes nothing. On an error the map is unchanged.
    pub fn set(&mut self, start: u64, size: u64, kind: Kind) -> Result<(), MapError> {
        self.change(start, size, Some(kind))
    }

    /// Makes the `size` bytes at `start` a hole. On an error the map is unchanged.
    pub fn remove(&mut self, start: u64, size: u64) -> Result<(), MapError> {
        self.change(start, size, None)
    }

    fn change(&mut self, start: u64, size: u64, kind: Option<Kind>) -> Result<(), MapError> {
        let end = start
            .checked_add(size)
            .ok_or(MapError::Overflow { start, size })?;
        if size == 0 {
            return Ok(());
        }
        let mut next: heapless::Vec<Range, MAX_RANGES> = heapless::Vec::new();
        let mut push = |range: Range| -> Result<(), MapError> {
            if let Some(last) = next.last_mut() {
                if last.kind == range.kind && last.end() == range.start {
                    last.size += range.size;
                    return Ok(());
                }
            }
            next.push(range).map_err(|_| MapError::Full)
        };
        let mut placed = false;
        for range in &self.ranges {
            if range.end() <= start {
                push(*range)?;
                continue;
            }
            if !placed && range.start >= end {
                if let Some(kind) = kind {
                    push(Range { start, size, kind })?;
                }
                placed = true;
            }
            if range.start >= end {
                push(*range)?;
                continue;
            }
            // The range overlaps [start, end): keep what lies outside it.
            if range.start < start {
                push(Range {
                    start: range.start,
                    size: start - range.start,
                    kind: range.kind,
                })?;
            }
            if !placed {
                if let Some(kind) = kind {
                    push(Range { start, size, kind })?;
                }
                placed = true;
            }
            if range.end() > end {
                push(Range {
                    start: end,
                    size: range.end() - end,
                    kind: range.kind,
                })?;
            }
        }
        if !placed {
            if let Some(kind) = kind {
                push(Range { start, size, kind })?;
            }
        }
        self.ranges = next;
        Ok(())
    }
}

impl fmt::Display for MemoryMap {
    /// One line per range, as Linux prints its e820 map.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for range in &self.ranges {
            writeln!(
                f,
                "[mem {:#018x}-{:#018x}] {}",
                range.start,
                range.end() - 1,
                range.kind
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(map: &MemoryMap) -> std::vec::Vec<(u64, u64, u32)> {
        map.ranges()
            .iter()
            .map(|r| (r.start, r.end(), r.kind.type_number()))
            .collect()
    }

    /// QEMU q35 with 2 GiB, as SeaBIOS reports it.
    fn q35() -> MemoryMap {
        let mut map = MemoryMap::new();
        map.set(0, 0x9fc00, Kind::Ram).unwrap();
        map.set(0x9fc00, 0x400, Kind::Reserved).unwrap();
        map.set(0xf0000, 0x10000, Kind::Reserved).unwrap();
        map.set(0x10_0000, 0x7fee_0000 - 0x10_0000, Kind::Ram)
            .unwrap();
        map.set(0x7fee_0000, 0x2_0000, Kind::Reserved).unwrap();
        map.set(0xb000_0000, 0x1000_0000, Kind::Reserved).unwrap();
        map
    }

    #[test]
    fn carving_the_hypervisor_out_of_ram() {
        let mut map = q35();
        map.set(0x100_0000, 0x80_0000, Kind::Reserved).unwrap();
        assert_eq!(
            ranges(&map),
            [
                (0, 0x9fc00, 1),
                (0x9fc00, 0xa0000, 2),
                (0xf0000, 0x10_0000, 2),
                (0x10_0000, 0x100_0000, 1),
                (0x100_0000, 0x180_0000, 2),
                (0x180_0000, 0x7fee_0000, 1),
                (0x7fee_0000, 0x7ff0_0000, 2),
                (0xb000_0000, 0xc000_0000, 2),
            ]
        );
        assert_eq!(map.kind_at(0x17f_ffff), Some(Kind::Reserved));
        assert_eq!(map.kind_at(0x180_0000), Some(Kind::Ram));
        assert_eq!(map.kind_at(0xa0000), None);
        assert!(map.is_all(0x180_0000, 0x1000_0000, Kind::Ram));
        assert!(!map.is_all(0x80_0000, 0x100_0000, Kind::Ram));
        assert!(!map.is_all(0x9f000, 0x2000, Kind::Ram));
        assert!(!map.is_all(0x7fe0_0000, 0x20_0000, Kind::Ram));
        assert!(!map.is_all(0x1000, 0, Kind::Ram));
    }

    #[test]
    fn neighbours_merge_and_holes_split() {
        let mut map = q35();
        // Making the hole below the BIOS area reserved joins three ranges into one.
        map.set(0xa0000, 0x50000, Kind::Reserved).unwrap();
        assert_eq!(ranges(&map)[1], (0x9fc00, 0x10_0000, 2));
        map.remove(0x20_0000, 0x1000).unwrap();
        assert_eq!(
            ranges(&map)[2..4],
            [(0x10_0000, 0x20_0000, 1), (0x20_1000, 0x7fee_0000, 1)]
        );
        // Setting the hole again as RAM merges it back.
        map.set(0x20_0000, 0x1000, Kind::Ram).unwrap();
        assert_eq!(ranges(&map)[2], (0x10_0000, 0x7fee_0000, 1));
        // A range over several changes all of them.
        map.set(0x5_0000, 0x7ff0_0000, Kind::Unusable).unwrap();
        assert_eq!(
            ranges(&map),
            [
                (0, 0x5_0000, 1),
                (0x5_0000, 0x7ff5_0000, 5),
                (0xb000_0000, 0xc000_0000, 2)
            ]
        );
    }

    #[test]
    fn bad_changes_leave_the_map_alone() {
        let mut map = q35();
        let before = map.clone();
        assert_eq!(
            map.set(u64::MAX - 10, 20, Kind::Ram),
            Err(MapError::Overflow {
                start: u64::MAX - 10,
                size: 20
            })
        );
        map.set(5, 0, Kind::Unusable).unwrap();
        assert_eq!(map, before);
        // A hole in every other page of a RAM range: 128 ranges fit, the 129th does not.
        let mut map = MemoryMap::new();
        map.set(0, 0x100_0000, Kind::Ram).unwrap();
        for page in 0..127 {
            map.remove(0x1000 + page * 0x2000, 0x1000).unwrap();
        }
        assert_eq!(map.ranges().len(), 128);
        let full = map.clone();
        assert_eq!(
            map.remove(0x1000 + 127 * 0x2000, 0x1000),
            Err(MapError::Full)
        );
        assert_eq!(map, full);
        assert_eq!(
            MapError::Full.to_string(),
            "the memory map would need more than 128 ranges"
        );
    }

    #[test]
    fn display_is_linuxs_format() {
        let mut map = MemoryMap::new();
        map.set(0x10_0000, 0x10_0000, Kind::Ram).unwrap();
        map.set(0x20_0000, 0x1000, Kind::Other(12)).unwrap();
        assert_eq!(
            map.to_string(),
            "[mem 0x0000000000100000-0x00000000001fffff] RAM\n\
             [mem 0x0000000000200000-0x0000000000200fff] type 12\n"
        );
    }
}
