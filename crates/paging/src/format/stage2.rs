//! Arm VMSAv8-64 stage-2 translation (guest-physical to physical), 4 KiB granule.
//!
//! Arm ARM (DDI 0487) references: D8.3 "Translation table descriptor formats" (stage 2 block
//! and page descriptors), D8.4 "Memory access control" (S2AP, XN), D8.5 "Memory region
//! attributes" (stage 2 MemAttr with FEAT_S2FWB disabled), D8.2 "Translation table walk" and
//! the `AArch64.S2InconsistentSL` pseudocode (start level and concatenation), and the register
//! descriptions of VTCR_EL2 and VTTBR_EL2 in D19.

use super::arm::{self, PaSize, SH_INNER, WALK_ATTRIBUTES, XN};
use super::{Entry, Format, Level};
use crate::addr::{GuestPhysAddr, PhysAddr};
use crate::attr::{Access, Attributes, Cacheability, MemoryType};
use crate::error::ConfigError;
use crate::memory::Descriptor;

/// S2AP[0], bit 6: stage-2 read permission.
const S2AP_READ: u64 = 1 << 6;
/// S2AP[1], bit 7: stage-2 write permission.
const S2AP_WRITE: u64 = 1 << 7;
/// MemAttr[3:0], bits \[5:2\]. MemAttr[3:2] (bits \[5:4\]) is the outer attribute, MemAttr[1:0]
/// (bits \[3:2\]) the inner one; outer 0b00 means Device memory.
const MEMATTR_SHIFT: u32 = 2;
const MEMATTR_MASK: u64 = 0b1111 << MEMATTR_SHIFT;
/// Device-nGnRE. Stage 2 combines with the guest's stage-1 type by taking the more restrictive
/// one, so nGnRE still lets the guest ask for nGnRnE.
const MEMATTR_DEVICE_NGNRE: u64 = 0b0001;
/// Normal, inner and outer Non-cacheable.
const MEMATTR_NORMAL_NC: u64 = 0b0101;
/// Normal, inner and outer Write-Through.
const MEMATTR_NORMAL_WT: u64 = 0b1010;
/// Normal, inner and outer Write-Back.
const MEMATTR_NORMAL_WB: u64 = 0b1111;

/// Largest number of concatenated tables at the initial lookup level (Arm ARM D8.2: "up to 16
/// translation tables can be concatenated at the initial stage 2 lookup level").
pub const MAX_CONCATENATED: usize = 16;

/// The Arm stage-2 format for one input (IPA) size.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stage2 {
    input_bits: u32,
    start_level: Level,
}

impl Stage2 {
    /// Smallest supported IPA size.
    pub const MIN_INPUT_BITS: u32 = 32;
    /// Largest supported IPA size (without FEAT_LPA2).
    pub const MAX_INPUT_BITS: u32 = 48;

    /// The format for an IPA size of `input_bits` (32 to 48).
    ///
    /// The start level is the one VTCR_EL2.SL0 will select: the walk starts as low as possible
    /// using up to 16 concatenated tables (at most 13 bits resolved at the initial level), which
    /// saves a level of lookups: 32-34 bits start at level 2 (4 to 16 tables), 35-43 bits at
    /// level 1 (1 to 16 tables), 44-48 bits at level 0.
    pub const fn new(input_bits: u32) -> Result<Self, ConfigError> {
        if input_bits < Self::MIN_INPUT_BITS || input_bits > Self::MAX_INPUT_BITS {
            return Err(ConfigError::InputSize {
                bits: input_bits,
                min: Self::MIN_INPUT_BITS,
                max: Self::MAX_INPUT_BITS,
            });
        }
        // A level starting at bit `shift` can resolve at most 9 + 4 bits with concatenation.
        let start_level = if input_bits <= Level::L2.shift() + 13 {
            Level::L2
        } else if input_bits <= Level::L1.shift() + 13 {
            Level::L1
        } else {
            Level::L0
        };
        Ok(Self {
            input_bits,
            start_level,
        })
    }

    /// Number of concatenated root tables (1 to 16).
    pub fn concatenated_tables(&self) -> usize {
        self.root_frames()
    }

    /// The VTCR_EL2 value for this format: T0SZ and SL0 from the input size, walks through
    /// write-back inner-shareable memory, 4 KiB granule, PS = `pa_size`, and 16-bit VMIDs when
    /// `vmid16` (VS, needs FEAT_VMID16). Hardware access/dirty management (HA, HD) stays off.
    ///
    /// Fails if the input size exceeds the physical address size, which the architecture
    /// does not allow for stage 2.
    pub fn vtcr(&self, pa_size: PaSize, vmid16: bool) -> Result<Vtcr, ConfigError> {
        if self.input_bits > pa_size.bits() {
            return Err(ConfigError::InputLargerThanPhysical {
                input: self.input_bits,
                physical: pa_size.bits(),
            });
        }
        // VTCR_EL2.SL0 with TG0 = 4 KiB: 0b00 start at level 2, 0b01 level 1, 0b10 level 0.
        let sl0 = 2 - self.start_level.number() as u64;
        let value = (64 - self.input_bits as u64)
            | (sl0 << 6)
            | WALK_ATTRIBUTES
            | (pa_size.field() << 16)
            | ((vmid16 as u64) << 19)
            | Vtcr::RES1;
        Ok(Vtcr(value))
    }

    /// The VTTBR_EL2 value: root table address in BADDR and `vmid` in VMID (bits \[55:48\], or
    /// \[63:48\] with 16-bit VMIDs). CnP stays 0.
    pub fn vttbr(&self, root: PhysAddr, vmid: u16, vmid16: bool) -> Result<Vttbr, ConfigError> {
        if !vmid16 && vmid > 0xff {
            return Err(ConfigError::VmidTooWide { vmid });
        }
        // BADDR must be aligned to the size of the (concatenated) root table.
        let root_bytes = self.root_frames() as u64 * 4096;
        if !root.is_aligned(root_bytes) || root.as_u64() >> 48 != 0 {
            return Err(ConfigError::UnalignedRoot(root));
        }
        Ok(Vttbr(root.as_u64() | (vmid as u64) << 48))
    }
}

/// A VTCR_EL2 value (Virtualization Translation Control Register).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Vtcr(u64);

impl Vtcr {
    /// Bit 31 is RES1.
    const RES1: u64 = 1 << 31;

    /// The raw register value.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// T0SZ, bits \[5:0\]: 64 minus the IPA size.
    pub const fn t0sz(self) -> u8 {
        (self.0 & 0x3f) as u8
    }

    /// SL0, bits \[7:6\]: the encoded start level.
    pub const fn sl0(self) -> u8 {
        ((self.0 >> 6) & 0b11) as u8
    }

    /// PS, bits \[18:16\].
    pub const fn ps(self) -> u8 {
        ((self.0 >> 16) & 0b111) as u8
    }
}

/// A VTTBR_EL2 value (Virtualization Translation Table Base Register).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Vttbr(u64);

impl Vttbr {
    /// The raw register value.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// BADDR: the root table address.
    pub const fn baddr(self) -> PhysAddr {
        PhysAddr::new(self.0 & super::bits(47, 1))
    }

    /// The VMID field, bits \[63:48\].
    pub const fn vmid(self) -> u16 {
        (self.0 >> 48) as u16
    }
}

impl Format for Stage2 {
    type Input = GuestPhysAddr;
    const NAME: &'static str = "Arm stage-2";

    fn input_bits(&self) -> u32 {
        self.input_bits
    }

    fn output_bits(&self) -> u32 {
        48
    }

    fn start_level(&self) -> Level {
        self.start_level
    }

    fn block_allowed(&self, level: Level) -> bool {
        // 4 KiB granule: blocks at levels 1 (1 GiB) and 2 (2 MiB) only.
        level == Level::L1 || level == Level::L2
    }

    fn check_attributes(&self, _attributes: Attributes) -> Result<(), &'static str> {
        // S2AP and XN are independent bits, so every permission combination is encodable
        // (including execute-only and no access at all).
        Ok(())
    }

    fn encode_table(&self, _level: Level, table: PhysAddr) -> Descriptor {
        arm::table(table)
    }

    fn encode_leaf(&self, level: Level, output: PhysAddr, attributes: Attributes) -> Descriptor {
        let mut bits = SH_INNER;
        if attributes.access.contains(Access::READ) {
            bits |= S2AP_READ;
        }
        if attributes.access.contains(Access::WRITE) {
            bits |= S2AP_WRITE;
        }
        if !attributes.access.contains(Access::EXECUTE) {
            bits |= XN;
        }
        let memattr = match attributes.memory {
            MemoryType::Device => MEMATTR_DEVICE_NGNRE,
            MemoryType::Normal(Cacheability::NonCacheable) => MEMATTR_NORMAL_NC,
            MemoryType::Normal(Cacheability::WriteThrough) => MEMATTR_NORMAL_WT,
            MemoryType::Normal(Cacheability::WriteBack) => MEMATTR_NORMAL_WB,
        };
        arm::leaf(level, output, bits | memattr << MEMATTR_SHIFT)
    }

    fn decode(&self, level: Level, descriptor: Descriptor) -> Entry {
        arm::decode(
            level,
            descriptor,
            |l| self.block_allowed(l),
            |raw| {
                let mut access = Access::empty();
                access.set(Access::READ, raw & S2AP_READ != 0);
                access.set(Access::WRITE, raw & S2AP_WRITE != 0);
                // XN[1:0] (bits [54:53]): any non-zero value forbids some execution; treat it
                // as not executable.
                access.set(Access::EXECUTE, raw & (0b11 << 53) == 0);
                let memattr = (raw & MEMATTR_MASK) >> MEMATTR_SHIFT;
                let memory = if memattr >> 2 == 0 {
                    MemoryType::Device
                } else {
                    MemoryType::Normal(match memattr & 0b11 {
                        0b10 => Cacheability::WriteThrough,
                        0b11 => Cacheability::WriteBack,
                        _ => Cacheability::NonCacheable,
                    })
                };
                Attributes { access, memory }
            },
        )
    }
}
