//! Arm VMSAv8-64 stage-1 translation for the EL2 regime (the hypervisor's own map, HCR_EL2.E2H
//! = 0, TTBR0_EL2 only), 4 KiB granule.
//!
//! Arm ARM (DDI 0487) references: D8.3 "Translation table descriptor formats" (stage 1 block
//! and page descriptors), D8.4 "Memory access control" (AP\[2:1\] for a regime with one
//! privilege level: AP\[1\] is RES1, AP\[2\] selects read-only; XN at bit 54), D8.5 "Memory region
//! attributes" (AttrIndx selects a MAIR_EL2 byte), and the register descriptions of TCR_EL2 and
//! MAIR_EL2 in D19.

use super::arm::{self, PaSize, SH_INNER, WALK_ATTRIBUTES, XN};
use super::{Entry, Format, Level};
use crate::addr::{PhysAddr, VirtAddr};
use crate::attr::{Access, Attributes, Cacheability, MemoryType};
use crate::error::ConfigError;
use crate::memory::Descriptor;

/// AttrIndx[2:0], bits \[4:2\].
const ATTR_INDEX_SHIFT: u32 = 2;
const ATTR_INDEX_MASK: u64 = 0b111 << ATTR_INDEX_SHIFT;
/// AP[1], bit 6: RES1 in a single-privilege regime.
const AP1: u64 = 1 << 6;
/// AP[2], bit 7: read-only.
const AP2_READ_ONLY: u64 = 1 << 7;

/// MAIR_EL2 attribute indices used by this format.
const ATTR_DEVICE: u64 = 0;
const ATTR_NORMAL_WB: u64 = 1;
const ATTR_NORMAL_NC: u64 = 2;
const ATTR_NORMAL_WT: u64 = 3;

/// The MAIR_EL2 value the descriptors of this format assume (Arm ARM D19, "MAIR_EL2"):
/// Attr0 = 0x04 Device-nGnRE, Attr1 = 0xff Normal Write-Back non-transient read/write-allocate,
/// Attr2 = 0x44 Normal Non-cacheable, Attr3 = 0xbb Normal Write-Through non-transient
/// read/write-allocate; Attr4-7 unused (Device-nGnRnE).
pub const MAIR_EL2: u64 = 0x04 | (0xff << 8) | (0x44 << 16) | (0xbb << 24);

/// The EL2 stage-1 format for one virtual address size.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stage1El2 {
    input_bits: u32,
}

impl Stage1El2 {
    /// Smallest supported VA size (TCR_EL2.T0SZ = 39, start level 2).
    pub const MIN_INPUT_BITS: u32 = 25;
    /// Largest supported VA size without FEAT_LVA.
    pub const MAX_INPUT_BITS: u32 = 48;

    /// The format for a virtual address space of `input_bits` bits (25 to 48).
    pub const fn new(input_bits: u32) -> Result<Self, ConfigError> {
        if input_bits < Self::MIN_INPUT_BITS || input_bits > Self::MAX_INPUT_BITS {
            return Err(ConfigError::InputSize {
                bits: input_bits,
                min: Self::MIN_INPUT_BITS,
                max: Self::MAX_INPUT_BITS,
            });
        }
        Ok(Self { input_bits })
    }

    /// The TCR_EL2 value: T0SZ from the VA size, walks through write-back inner-shareable
    /// memory, 4 KiB granule, PS = `pa_size`; RES1 bits 31 and 23 set.
    pub fn tcr(&self, pa_size: PaSize) -> Tcr {
        Tcr((64 - self.input_bits as u64)
            | WALK_ATTRIBUTES
            | (pa_size.field() << 16)
            | (1 << 23)
            | (1 << 31))
    }
}

/// A TCR_EL2 value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Tcr(u64);

impl Tcr {
    /// The raw register value.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// T0SZ, bits \[5:0\].
    pub const fn t0sz(self) -> u8 {
        (self.0 & 0x3f) as u8
    }
}

impl Format for Stage1El2 {
    type Input = VirtAddr;
    const NAME: &'static str = "Arm EL2 stage-1";

    fn input_bits(&self) -> u32 {
        self.input_bits
    }

    fn output_bits(&self) -> u32 {
        48
    }

    fn start_level(&self) -> Level {
        // Stage 1 has no concatenation: the start level follows from T0SZ alone.
        if self.input_bits > Level::L0.shift() {
            Level::L0
        } else if self.input_bits > Level::L1.shift() {
            Level::L1
        } else {
            Level::L2
        }
    }

    fn block_allowed(&self, level: Level) -> bool {
        level == Level::L1 || level == Level::L2
    }

    fn check_attributes(&self, attributes: Attributes) -> Result<(), &'static str> {
        if !attributes.access.contains(Access::READ) {
            return Err("Arm stage-1 mappings are always readable (AP has no write-only or no-access encoding)");
        }
        Ok(())
    }

    fn encode_table(&self, _level: Level, table: PhysAddr) -> Descriptor {
        arm::table(table)
    }

    fn encode_leaf(&self, level: Level, output: PhysAddr, attributes: Attributes) -> Descriptor {
        let mut bits = AP1 | SH_INNER;
        if !attributes.access.contains(Access::WRITE) {
            bits |= AP2_READ_ONLY;
        }
        if !attributes.access.contains(Access::EXECUTE) {
            bits |= XN;
        }
        let index = match attributes.memory {
            MemoryType::Device => ATTR_DEVICE,
            MemoryType::Normal(Cacheability::WriteBack) => ATTR_NORMAL_WB,
            MemoryType::Normal(Cacheability::NonCacheable) => ATTR_NORMAL_NC,
            MemoryType::Normal(Cacheability::WriteThrough) => ATTR_NORMAL_WT,
        };
        arm::leaf(level, output, bits | index << ATTR_INDEX_SHIFT)
    }

    fn decode(&self, level: Level, descriptor: Descriptor) -> Entry {
        arm::decode(
            level,
            descriptor,
            |l| self.block_allowed(l),
            |raw| {
                let mut access = Access::READ;
                access.set(Access::WRITE, raw & AP2_READ_ONLY == 0);
                access.set(Access::EXECUTE, raw & XN == 0);
                let memory = match (raw & ATTR_INDEX_MASK) >> ATTR_INDEX_SHIFT {
                    ATTR_NORMAL_WB => MemoryType::Normal(Cacheability::WriteBack),
                    ATTR_NORMAL_NC => MemoryType::Normal(Cacheability::NonCacheable),
                    ATTR_NORMAL_WT => MemoryType::Normal(Cacheability::WriteThrough),
                    _ => MemoryType::Device,
                };
                Attributes { access, memory }
            },
        )
    }
}
