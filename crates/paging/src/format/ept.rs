//! Intel extended page tables (guest-physical to physical), 4-level.
//!
//! Intel SDM Vol. 3C references: "EPT Translation Mechanism" (Tables "Format of an EPT
//! PML4 Entry", "... PDPTE that Maps a 1-GByte Page", "... PDE that Maps a 2-MByte Page",
//! "... Page-Table Entry that Maps a 4-KByte Page" and their table-referencing variants),
//! "EPT and Memory Typing", "Extended-Page-Table Pointer (EPTP)" in the VMCS chapter, and
//! Appendix A.10 "VPID and EPT Capabilities" (IA32_VMX_EPT_VPID_CAP).

use super::{bits, Entry, Format, LargePages, Level};
use crate::addr::{GuestPhysAddr, PhysAddr};
use crate::attr::{Access, Attributes, Cacheability, MemoryType};
use crate::memory::Descriptor;

/// Bit 0: read access.
const READ: u64 = 1 << 0;
/// Bit 1: write access.
const WRITE: u64 = 1 << 1;
/// Bit 2: execute access (supervisor-mode execute when mode-based execute control is on).
const EXECUTE: u64 = 1 << 2;
/// Bits \[5:3\] of a leaf: EPT memory type.
const MEMORY_TYPE_SHIFT: u32 = 3;
/// Bit 7: the entry maps a page (PDPTE: 1 GiB, PDE: 2 MiB) instead of referencing a table.
const PAGE_SIZE: u64 = 1 << 7;
/// Physical address bits \[51:12\].
const ADDRESS: u64 = bits(51, 12);

/// EPT memory types (SDM "EPT and Memory Typing"; same encoding as the MTRR/PAT types).
const TYPE_UC: u64 = 0;
const TYPE_WC: u64 = 1;
const TYPE_WT: u64 = 4;
const TYPE_WP: u64 = 5;
const TYPE_WB: u64 = 6;

/// The EPT format.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ept {
    large_pages: LargePages,
    execute_only: bool,
}

impl Ept {
    /// EPT with the given large-page support and without execute-only pages.
    pub const fn new(large_pages: LargePages) -> Self {
        Self {
            large_pages,
            execute_only: false,
        }
    }

    /// The same format, allowing execute-only pages (supported when bit 0 of
    /// `IA32_VMX_EPT_VPID_CAP` is set; otherwise such an entry is an EPT misconfiguration).
    pub const fn with_execute_only(self, execute_only: bool) -> Self {
        Self {
            large_pages: self.large_pages,
            execute_only,
        }
    }

    /// EPT as the CPU reports it in `IA32_VMX_EPT_VPID_CAP` (MSR 0x48C): bit 0 = execute-only
    /// pages, bit 16 = 2 MiB pages, bit 17 = 1 GiB pages.
    pub const fn from_capabilities(ept_vpid_cap: u64) -> Self {
        Self::new(LargePages {
            two_mib: ept_vpid_cap & (1 << 16) != 0,
            one_gib: ept_vpid_cap & (1 << 17) != 0,
        })
        .with_execute_only(ept_vpid_cap & 1 != 0)
    }

    /// The EPTP value for a root at `pml4`: memory type write-back for the walk (bits \[2:0\] =
    /// 6), page-walk length 4 (bits \[5:3\] = 3), accessed/dirty flags off (bit 6 = 0).
    pub fn eptp(&self, pml4: PhysAddr) -> Eptp {
        Eptp((pml4.as_u64() & ADDRESS) | TYPE_WB | (3 << 3))
    }
}

/// An extended-page-table pointer (the VMCS EPTP field).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Eptp(u64);

impl Eptp {
    /// The raw field value.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The PML4 table address.
    pub const fn pml4(self) -> PhysAddr {
        PhysAddr::new(self.0 & ADDRESS)
    }
}

impl Format for Ept {
    type Input = GuestPhysAddr;
    const NAME: &'static str = "Intel EPT";

    fn input_bits(&self) -> u32 {
        48
    }

    fn output_bits(&self) -> u32 {
        52
    }

    fn start_level(&self) -> Level {
        Level::L0
    }

    fn block_allowed(&self, level: Level) -> bool {
        self.large_pages.allows(level)
    }

    fn check_attributes(&self, attributes: Attributes) -> Result<(), &'static str> {
        let access = attributes.access;
        if access.is_empty() {
            return Err("an EPT entry with no access right is not present");
        }
        if access.contains(Access::WRITE) && !access.contains(Access::READ) {
            return Err("write without read is an EPT misconfiguration");
        }
        if access == Access::EXECUTE && !self.execute_only {
            return Err("execute-only EPT pages are not supported by this CPU");
        }
        Ok(())
    }

    fn encode_table(&self, _level: Level, table: PhysAddr) -> Descriptor {
        // Non-leaf entries grant everything; the leaf decides.
        Descriptor::from_bits((table.as_u64() & ADDRESS) | READ | WRITE | EXECUTE)
    }

    fn encode_leaf(&self, level: Level, output: PhysAddr, attributes: Attributes) -> Descriptor {
        let mut raw = output.as_u64() & ADDRESS & !(level.entry_size() - 1);
        if attributes.access.contains(Access::READ) {
            raw |= READ;
        }
        if attributes.access.contains(Access::WRITE) {
            raw |= WRITE;
        }
        if attributes.access.contains(Access::EXECUTE) {
            raw |= EXECUTE;
        }
        let memory_type = match attributes.memory {
            MemoryType::Device => TYPE_UC,
            MemoryType::Normal(Cacheability::NonCacheable) => TYPE_WC,
            MemoryType::Normal(Cacheability::WriteThrough) => TYPE_WT,
            MemoryType::Normal(Cacheability::WriteBack) => TYPE_WB,
        };
        raw |= memory_type << MEMORY_TYPE_SHIFT;
        if level != Level::L3 {
            raw |= PAGE_SIZE;
        }
        Descriptor::from_bits(raw)
    }

    fn decode(&self, level: Level, descriptor: Descriptor) -> Entry {
        let raw = descriptor.bits();
        // An entry is present when any of bits [2:0] is set. Write without read, and
        // execute-only without the capability, are misconfigurations at every level (SDM
        // "EPT Misconfigurations"): they translate nothing.
        let rwx = raw & (READ | WRITE | EXECUTE);
        if rwx == 0 || rwx & (READ | WRITE) == WRITE || (rwx == EXECUTE && !self.execute_only) {
            return Entry::Invalid;
        }
        let leaf = level == Level::L3 || (raw & PAGE_SIZE != 0);
        if !leaf {
            return Entry::Table(PhysAddr::new(raw & ADDRESS));
        }
        if level != Level::L3 && !self.block_allowed(level) {
            return Entry::Invalid; // PS set where the format has no large pages
        }
        let mut access = Access::empty();
        access.set(Access::READ, raw & READ != 0);
        access.set(Access::WRITE, raw & WRITE != 0);
        access.set(Access::EXECUTE, raw & EXECUTE != 0);
        let memory = match (raw >> MEMORY_TYPE_SHIFT) & 0b111 {
            TYPE_UC => MemoryType::Device,
            TYPE_WC => MemoryType::Normal(Cacheability::NonCacheable),
            TYPE_WT | TYPE_WP => MemoryType::Normal(Cacheability::WriteThrough),
            TYPE_WB => MemoryType::Normal(Cacheability::WriteBack),
            // Types 2, 3 and 7 are reserved: a misconfiguration, not a mapping.
            _ => return Entry::Invalid,
        };
        Entry::Leaf {
            output: PhysAddr::new(raw & ADDRESS & !(level.entry_size() - 1)),
            attributes: Attributes { access, memory },
        }
    }
}
