//! Architecture-neutral mapping attributes.
//!
//! Every format encodes these into its own descriptor bits and decodes them back; decoding
//! what was encoded gives the same value (the golden and property tests check this). A format
//! that cannot express a combination (x86 has no write-only pages, for example) rejects it
//! with [`Reason::UnsupportedAttributes`](crate::Reason::UnsupportedAttributes) instead of
//! silently widening the permissions.

use bitflags::bitflags;
use core::fmt;

bitflags! {
    /// Access permissions granted by a mapping.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct Access: u8 {
        /// Data reads.
        const READ = 1 << 0;
        /// Data writes.
        const WRITE = 1 << 1;
        /// Instruction fetches.
        const EXECUTE = 1 << 2;
        /// Read and write.
        const RW = Self::READ.bits() | Self::WRITE.bits();
        /// Read, write and execute.
        const RWX = Self::RW.bits() | Self::EXECUTE.bits();
        /// Read and execute.
        const RX = Self::READ.bits() | Self::EXECUTE.bits();
    }
}

/// Cacheability of normal memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Cacheability {
    /// Not cached (Arm Normal Non-cacheable, x86 write-combining).
    NonCacheable,
    /// Write-through cached.
    WriteThrough,
    /// Write-back cached: ordinary RAM.
    WriteBack,
}

/// The kind of memory behind a mapping.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MemoryType {
    /// Device registers: uncached, no speculation, no merging (Arm Device-nGnRE, x86 UC).
    Device,
    /// Normal memory with the given cacheability.
    Normal(Cacheability),
}

/// What a mapping allows and what memory it maps.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Attributes {
    /// Permissions.
    pub access: Access,
    /// Memory type and cacheability.
    pub memory: MemoryType,
}

impl Attributes {
    /// Read-write-execute, write-back RAM.
    pub const RAM_RWX: Self = Self::new(Access::RWX, MemoryType::Normal(Cacheability::WriteBack));
    /// Read-write, not executable, write-back RAM.
    pub const RAM_RW: Self = Self::new(Access::RW, MemoryType::Normal(Cacheability::WriteBack));
    /// Read-only, not executable, write-back RAM.
    pub const RAM_RO: Self = Self::new(Access::READ, MemoryType::Normal(Cacheability::WriteBack));
    /// Read-write device registers, never executable.
    pub const DEVICE_RW: Self = Self::new(Access::RW, MemoryType::Device);

    /// Attributes from their parts.
    pub const fn new(access: Access, memory: MemoryType) -> Self {
        Self { access, memory }
    }
}

impl fmt::Display for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |set: bool, c: char| if set { c } else { '-' };
        write!(
            f,
            "{}{}{} ",
            flag(self.access.contains(Access::READ), 'r'),
            flag(self.access.contains(Access::WRITE), 'w'),
            flag(self.access.contains(Access::EXECUTE), 'x'),
        )?;
        match self.memory {
            MemoryType::Device => f.write_str("device"),
            MemoryType::Normal(Cacheability::NonCacheable) => f.write_str("normal-nc"),
            MemoryType::Normal(Cacheability::WriteThrough) => f.write_str("normal-wt"),
            MemoryType::Normal(Cacheability::WriteBack) => f.write_str("normal-wb"),
        }
    }
}
