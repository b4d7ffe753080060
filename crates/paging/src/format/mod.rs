//! Translation formats: how a descriptor is encoded at each level.
//!
//! All four formats use a 4 KiB granule with 512 eight-byte descriptors per table, so a level
//! resolves nine address bits and level numbers agree across architectures: level 3 maps
//! 4 KiB pages, level 2 entries cover 2 MiB, level 1 entries 1 GiB and level 0 entries
//! 512 GiB (Arm ARM D8.2 "Translation table walk"; on x86 the PT, PD, PDPT and PML4).

mod arm;
/// Arm register field encodings shared by the stage-1 and stage-2 formats.
pub mod arm_regs {
    pub use super::arm::PaSize;
}
pub mod ept;
pub mod long_mode;
pub mod stage1_el2;
pub mod stage2;

use crate::addr::{Address, PhysAddr};
use crate::attr::Attributes;
use crate::memory::Descriptor;
use core::fmt;

/// A translation-table level, 0 (largest entries) to 3 (4 KiB pages).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(u8);

impl Level {
    /// Level 0: entries cover 512 GiB, never leaves in the supported formats.
    pub const L0: Level = Level(0);
    /// Level 1: entries cover 1 GiB.
    pub const L1: Level = Level(1);
    /// Level 2: entries cover 2 MiB.
    pub const L2: Level = Level(2);
    /// Level 3: entries map 4 KiB pages.
    pub const L3: Level = Level(3);

    /// The level with number `n`, if it is 0 to 3.
    pub const fn new(n: u8) -> Option<Level> {
        if n <= 3 {
            Some(Level(n))
        } else {
            None
        }
    }

    /// The level number.
    pub const fn number(self) -> u8 {
        self.0
    }

    /// The lowest input-address bit this level resolves.
    pub const fn shift(self) -> u32 {
        12 + 9 * (3 - self.0 as u32)
    }

    /// Bytes covered by one entry of this level.
    pub const fn entry_size(self) -> u64 {
        1 << self.shift()
    }

    /// The next level down, if any.
    pub const fn next(self) -> Option<Level> {
        Level::new(self.0 + 1)
    }
}

impl fmt::Debug for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "level {}", self.0)
    }
}

/// A decoded descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Entry {
    /// Not valid: accesses fault.
    Invalid,
    /// Points to the next-level table.
    Table(PhysAddr),
    /// Maps a page (level 3) or a block (levels 1 and 2).
    Leaf {
        /// First byte of the mapped output.
        output: PhysAddr,
        /// What the mapping allows.
        attributes: Attributes,
    },
}

/// One translation format. The engine in [`PageTable`](crate::PageTable) is generic over it.
///
/// Formats are values rather than bare types because some have run-time parameters (the Arm
/// stage-2 input size, whether the CPU supports 1 GiB pages).
pub trait Format {
    /// The address space the format translates from.
    type Input: Address;

    /// Human-readable name, e.g. `"Arm stage-2"`.
    const NAME: &'static str;

    /// Size of the input address space in bits.
    fn input_bits(&self) -> u32;

    /// Size of the output (physical) address space in bits.
    fn output_bits(&self) -> u32;

    /// The level the walk starts at.
    fn start_level(&self) -> Level;

    /// Whether a leaf (block) may sit at `level`. Level 3 always holds pages; this is only
    /// asked for levels 0 to 2. If blocks are allowed at a level, they must be allowed at
    /// every level below it too (the engine splits a block into blocks one level down).
    fn block_allowed(&self, level: Level) -> bool;

    /// Checks that the format can encode `attributes`; the error says why not.
    fn check_attributes(&self, attributes: Attributes) -> Result<(), &'static str>;

    /// A descriptor at `level` pointing to the next-level table at `table`.
    fn encode_table(&self, level: Level, table: PhysAddr) -> Descriptor;

    /// A leaf descriptor at `level` mapping `output` (aligned to the level's entry size) with
    /// `attributes` (accepted by [`check_attributes`](Self::check_attributes)).
    fn encode_leaf(&self, level: Level, output: PhysAddr, attributes: Attributes) -> Descriptor;

    /// Decodes a descriptor found at `level`. Encodings the format reserves decode as
    /// [`Entry::Invalid`].
    fn decode(&self, level: Level, descriptor: Descriptor) -> Entry;

    /// The offset of `input` inside the format's linear input space `[0, 2^input_bits)`, or
    /// `None` when the address cannot be translated. Formats with a canonical-address hole
    /// override this.
    fn input_offset(&self, input: Self::Input) -> Option<u64> {
        let raw = input.as_u64();
        (raw >> self.input_bits() == 0).then_some(raw)
    }

    /// The inverse of [`input_offset`](Self::input_offset).
    fn offset_input(&self, offset: u64) -> Self::Input {
        Self::Input::new(offset)
    }

    /// Number of descriptors in the root table (more than 512 when the format concatenates
    /// root tables, fewer when the input size does not fill the start level).
    fn root_entries(&self) -> usize {
        1 << (self.input_bits() - self.start_level().shift())
    }

    /// Number of 4 KiB frames of the root table (at least one).
    fn root_frames(&self) -> usize {
        self.root_entries()
            .div_ceil(crate::memory::ENTRIES_PER_TABLE)
            .max(1)
    }
}

/// Which large pages an x86 CPU supports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LargePages {
    /// 2 MiB pages (always on x86-64 long mode; an EPT capability).
    pub two_mib: bool,
    /// 1 GiB pages (CPUID 8000_0001h EDX bit 26, or the EPT capability).
    pub one_gib: bool,
}

impl LargePages {
    /// 2 MiB and 1 GiB pages.
    pub const ALL: Self = Self {
        two_mib: true,
        one_gib: true,
    };
    /// Only 4 KiB pages.
    pub const NONE: Self = Self {
        two_mib: false,
        one_gib: false,
    };

    /// Whether a leaf may sit at `level`. 1 GiB pages are used only together with 2 MiB
    /// pages: splitting a 1 GiB page must produce 2 MiB pages (every CPU with 1 GiB pages
    /// has 2 MiB pages too).
    pub(crate) fn allows(self, level: Level) -> bool {
        match level.number() {
            1 => self.one_gib && self.two_mib,
            2 => self.two_mib,
            _ => false,
        }
    }
}

/// Bits `[hi:lo]` set (inclusive), for building field masks.
pub(crate) const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & !((1u64 << lo) - 1)
}
