//! x86-64 4-level long-mode paging, used both for AMD nested paging (guest-physical to
//! physical) and for the hypervisor's own host tables (virtual to physical).
//!
//! References: Intel SDM Vol. 3A, chapter "Paging", section "4-Level Paging and 5-Level
//! Paging" (Tables "Format of a PML4 Entry", "... PDPTE that Maps a 1-GByte Page", "... PDE
//! that Maps a 2-MByte Page", "... PTE that Maps a 4-KByte Page") and "Page Attribute Table
//! (PAT)"; AMD APM Vol. 2, 5.3 "Long-Mode Page Translation", 5.4 "Page-Translation-Table
//! Entry Fields", 7.8 "Page-Attribute Table Mechanism" and 15.25 "Nested Paging" (15.25.5:
//! nested walks treat every access as a user access, so nested entries need U/S = 1).

use super::{bits, Entry, Format, LargePages, Level};
use crate::addr::{Address, GuestPhysAddr, PhysAddr, VirtAddr};
use crate::attr::{Access, Attributes, Cacheability, MemoryType};
use crate::memory::Descriptor;
use core::marker::PhantomData;

/// P, bit 0: present.
const PRESENT: u64 = 1 << 0;
/// R/W, bit 1: writable.
const WRITABLE: u64 = 1 << 1;
/// U/S, bit 2: user accessible.
const USER: u64 = 1 << 2;
/// PWT, bit 3: page-level write-through (PAT index bit 0).
const PWT: u64 = 1 << 3;
/// PCD, bit 4: page-level cache disable (PAT index bit 1).
const PCD: u64 = 1 << 4;
/// A, bit 5: accessed. Set up front so the walker never writes to our tables.
const ACCESSED: u64 = 1 << 5;
/// D, bit 6 of a leaf: dirty. Set up front for the same reason.
const DIRTY: u64 = 1 << 6;
/// PS, bit 7 of a PDPTE/PDE: maps a 1 GiB/2 MiB page. (Bit 7 of a PTE is PAT, left 0.)
const PAGE_SIZE: u64 = 1 << 7;
/// XD/NX, bit 63: execute disable (needs EFER.NXE = 1).
const NO_EXECUTE: u64 = 1 << 63;
/// Physical address bits \[51:12\] (MAXPHYADDR up to 52).
const ADDRESS: u64 = bits(51, 12);

/// The IA32_PAT (MSR 0x277) value the memory-type encoding of this format assumes:
/// PA0 = WB (06h), PA1 = WT (04h), PA2 = WC (01h), PA3 = UC (00h), repeated for PA4-7.
/// Leaves select PA0-PA3 through PWT and PCD only (the PAT bit stays 0). The power-on PAT
/// differs only in PA2 (UC- instead of WC), so a host that keeps it gets UC- for
/// non-cacheable normal memory.
pub const PAT: u64 = 0x0001_0406_0001_0406;

/// The addresses a long-mode table can translate: guest-physical (nested paging) or virtual
/// (host tables). Sealed: implemented only by [`GuestPhysAddr`] and [`VirtAddr`].
pub trait LongModeInput: Address + sealed::Sealed {
    /// Whether entries need U/S = 1 (nested paging treats every access as a user access).
    const USER: bool;
    /// Whether addresses are canonical virtual addresses (bits \[63:47\] all equal).
    const CANONICAL: bool;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::GuestPhysAddr {}
    impl Sealed for super::VirtAddr {}
}

impl LongModeInput for GuestPhysAddr {
    const USER: bool = true;
    const CANONICAL: bool = false;
}

impl LongModeInput for VirtAddr {
    const USER: bool = false;
    const CANONICAL: bool = true;
}

/// The x86-64 4-level format; see [`Npt`] and [`HostTables`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LongMode<A> {
    large_pages: LargePages,
    input: PhantomData<A>,
}

/// AMD nested page tables (NPT): guest-physical to physical.
pub type Npt = LongMode<GuestPhysAddr>;

/// The hypervisor's own x86-64 tables (CR3): virtual to physical, canonical addresses.
pub type HostTables = LongMode<VirtAddr>;

impl<A: LongModeInput> LongMode<A> {
    /// The format with the given large-page support (2 MiB pages always exist in long mode;
    /// 1 GiB pages need CPUID 8000_0001h EDX bit 26).
    pub const fn new(large_pages: LargePages) -> Self {
        Self {
            large_pages,
            input: PhantomData,
        }
    }

    /// The CR3 (host) or VMCB nCR3 (nested) value for a root at `pml4`: PWT = PCD = 0, so the
    /// walk uses write-back memory.
    pub fn cr3(&self, pml4: PhysAddr) -> u64 {
        pml4.as_u64() & ADDRESS
    }

    fn user_bit() -> u64 {
        if A::USER {
            USER
        } else {
            0
        }
    }
}

impl<A: LongModeInput> Format for LongMode<A> {
    type Input = A;
    const NAME: &'static str = if A::USER {
        "AMD nested paging"
    } else {
        "x86-64 host paging"
    };

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
        if !attributes.access.contains(Access::READ) {
            return Err("x86 pages are always readable (no write-only or no-access encoding)");
        }
        Ok(())
    }

    fn encode_table(&self, _level: Level, table: PhysAddr) -> Descriptor {
        Descriptor::from_bits(
            (table.as_u64() & ADDRESS) | PRESENT | WRITABLE | ACCESSED | Self::user_bit(),
        )
    }

    fn encode_leaf(&self, level: Level, output: PhysAddr, attributes: Attributes) -> Descriptor {
        let mut raw = (output.as_u64() & ADDRESS & !(level.entry_size() - 1))
            | PRESENT
            | ACCESSED
            | DIRTY
            | Self::user_bit();
        if attributes.access.contains(Access::WRITE) {
            raw |= WRITABLE;
        }
        if !attributes.access.contains(Access::EXECUTE) {
            raw |= NO_EXECUTE;
        }
        raw |= match attributes.memory {
            MemoryType::Normal(Cacheability::WriteBack) => 0,
            MemoryType::Normal(Cacheability::WriteThrough) => PWT,
            MemoryType::Normal(Cacheability::NonCacheable) => PCD,
            MemoryType::Device => PCD | PWT,
        };
        if level != Level::L3 {
            raw |= PAGE_SIZE;
        }
        Descriptor::from_bits(raw)
    }

    fn decode(&self, level: Level, descriptor: Descriptor) -> Entry {
        let raw = descriptor.bits();
        if raw & PRESENT == 0 {
            return Entry::Invalid;
        }
        if level == Level::L0 && raw & PAGE_SIZE != 0 {
            return Entry::Invalid; // PS is reserved (must be 0) in a PML4E
        }
        let leaf = level == Level::L3 || raw & PAGE_SIZE != 0;
        if !leaf {
            return Entry::Table(PhysAddr::new(raw & ADDRESS));
        }
        if level != Level::L3 && !self.block_allowed(level) {
            return Entry::Invalid; // PS set where the CPU has no such pages
        }
        let mut access = Access::READ;
        access.set(Access::WRITE, raw & WRITABLE != 0);
        access.set(Access::EXECUTE, raw & NO_EXECUTE == 0);
        let memory = match (raw & PCD != 0, raw & PWT != 0) {
            (false, false) => MemoryType::Normal(Cacheability::WriteBack),
            (false, true) => MemoryType::Normal(Cacheability::WriteThrough),
            (true, false) => MemoryType::Normal(Cacheability::NonCacheable),
            (true, true) => MemoryType::Device,
        };
        // For large pages bit 12 is the PAT bit, excluded by aligning to the page size.
        Entry::Leaf {
            output: PhysAddr::new(raw & ADDRESS & !(level.entry_size() - 1)),
            attributes: Attributes { access, memory },
        }
    }

    fn input_offset(&self, input: A) -> Option<u64> {
        let raw = input.as_u64();
        if !A::CANONICAL {
            return (raw >> 48 == 0).then_some(raw);
        }
        // Canonical: bits [63:47] are copies of bit 47. The upper half maps to offsets
        // 2^47..2^48, so the offset space stays linear inside each half.
        let upper = raw >> 47;
        (upper == 0 || upper == (1 << 17) - 1).then_some(raw & bits(47, 0))
    }

    fn offset_input(&self, offset: u64) -> A {
        if A::CANONICAL && offset & (1 << 47) != 0 {
            A::new(offset | bits(63, 48))
        } else {
            A::new(offset)
        }
    }
}
