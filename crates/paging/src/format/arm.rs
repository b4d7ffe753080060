//! Bits shared by the Arm VMSAv8-64 descriptor formats (stage 1 and stage 2, 4 KiB granule,
//! 48-bit output addresses without FEAT_LPA2).
//!
//! Arm ARM (DDI 0487) D8.3 "Translation table descriptor formats": bits[1:0] are 0b11 for a
//! table descriptor at levels 0 to 2 and for a page descriptor at level 3, 0b01 for a block
//! descriptor at levels 1 and 2; bit 0 clear means invalid; 0b01 at level 3 is reserved
//! (treated as invalid). The output address occupies bits[47:12] (bits[47:n] for a block whose
//! entry size is 2^n). Bit 10 is the Access Flag (D8.4.x "The Access flag"), which we always
//! set so that no Access flag fault is ever taken; bits[9:8] are the shareability field.

use super::{bits, Entry, Level};
use crate::addr::PhysAddr;
use crate::attr::Attributes;
use crate::memory::Descriptor;

/// Descriptor bit 0: valid.
pub(super) const VALID: u64 = 1 << 0;
/// Descriptor bit 1: table (levels 0-2) or page (level 3); clear for a block.
pub(super) const TABLE_OR_PAGE: u64 = 1 << 1;
/// Output address bits \[47:12\].
pub(super) const OUTPUT_ADDRESS: u64 = bits(47, 12);
/// Access Flag, bit 10.
pub(super) const AF: u64 = 1 << 10;
/// Shareability SH[1:0], bits [9:8]: 0b11 Inner Shareable.
pub(super) const SH_INNER: u64 = 0b11 << 8;
/// Execute-never, bit 54 (stage 2: XN[1]; EL2 stage 1: XN).
pub(super) const XN: u64 = 1 << 54;

/// Output address bits of a descriptor at `level`.
fn output_mask(level: Level) -> u64 {
    OUTPUT_ADDRESS & !(level.entry_size() - 1)
}

/// A table descriptor: next-level table address and bits[1:0] = 0b11.
pub(super) fn table(table: PhysAddr) -> Descriptor {
    Descriptor::from_bits((table.as_u64() & OUTPUT_ADDRESS) | VALID | TABLE_OR_PAGE)
}

/// A block or page descriptor with the given lower/upper attribute bits.
pub(super) fn leaf(level: Level, output: PhysAddr, attribute_bits: u64) -> Descriptor {
    let kind = if level == Level::L3 {
        VALID | TABLE_OR_PAGE
    } else {
        VALID
    };
    Descriptor::from_bits((output.as_u64() & output_mask(level)) | attribute_bits | AF | kind)
}

/// Decodes the structure; `attributes` decodes the attribute bits of a leaf.
pub(super) fn decode(
    level: Level,
    descriptor: Descriptor,
    block_levels: impl Fn(Level) -> bool,
    attributes: impl FnOnce(u64) -> Attributes,
) -> Entry {
    let raw = descriptor.bits();
    if raw & VALID == 0 {
        return Entry::Invalid;
    }
    let is_leaf = if level == Level::L3 {
        if raw & TABLE_OR_PAGE == 0 {
            return Entry::Invalid; // reserved encoding at level 3
        }
        true
    } else if raw & TABLE_OR_PAGE == 0 {
        if !block_levels(level) {
            return Entry::Invalid; // block descriptor where blocks are not permitted
        }
        true
    } else {
        false
    };
    if is_leaf {
        Entry::Leaf {
            output: PhysAddr::new(raw & output_mask(level)),
            attributes: attributes(raw),
        }
    } else {
        Entry::Table(PhysAddr::new(raw & OUTPUT_ADDRESS))
    }
}

/// Physical address size, the encoding shared by ID_AA64MMFR0_EL1.PARange, TCR_EL2.PS and
/// VTCR_EL2.PS (Arm ARM D19, "ID_AA64MMFR0_EL1").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum PaSize {
    /// 32 bits, 4 GiB.
    Bits32 = 0b000,
    /// 36 bits, 64 GiB.
    Bits36 = 0b001,
    /// 40 bits, 1 TiB.
    Bits40 = 0b010,
    /// 42 bits, 4 TiB.
    Bits42 = 0b011,
    /// 44 bits, 16 TiB.
    Bits44 = 0b100,
    /// 48 bits, 256 TiB.
    Bits48 = 0b101,
}

impl PaSize {
    /// From the `ID_AA64MMFR0_EL1.PARange` field. 52-bit ranges are capped at 48 bits: with a
    /// 4 KiB granule, 52-bit output addresses need FEAT_LPA2 descriptors, which this crate does
    /// not produce. Reserved values give `None`.
    pub const fn from_parange(parange: u8) -> Option<PaSize> {
        Some(match parange {
            0b000 => PaSize::Bits32,
            0b001 => PaSize::Bits36,
            0b010 => PaSize::Bits40,
            0b011 => PaSize::Bits42,
            0b100 => PaSize::Bits44,
            0b101 | 0b110 => PaSize::Bits48,
            _ => return None,
        })
    }

    /// The size in bits.
    pub const fn bits(self) -> u32 {
        match self {
            PaSize::Bits32 => 32,
            PaSize::Bits36 => 36,
            PaSize::Bits40 => 40,
            PaSize::Bits42 => 42,
            PaSize::Bits44 => 44,
            PaSize::Bits48 => 48,
        }
    }

    /// The 3-bit field value for `PS`/`PARange`.
    pub const fn field(self) -> u64 {
        self as u64
    }
}

/// Translation-table walk attributes shared by TCR_EL2 and VTCR_EL2 for the TTBR0/VTTBR
/// walk: IRGN0 = ORGN0 = 0b01 (Normal, write-back read/write-allocate cacheable),
/// SH0 = 0b11 (Inner Shareable), TG0 = 0b00 (4 KiB granule). Bits \[15:8\].
pub(super) const WALK_ATTRIBUTES: u64 = (0b01 << 8) | (0b01 << 10) | (0b11 << 12);
