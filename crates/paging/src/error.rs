//! Errors. Each names the operation, the address it is about and the reason, so a caller can
//! print it as is: `cannot map guest-physical 0x40001000: already mapped (pass replace to
//! overwrite)`.

use crate::addr::{Address, PhysAddr};
use crate::attr::Attributes;
use core::fmt;

/// The operation that failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Operation {
    /// Creating a table tree.
    Create,
    /// Mapping a range.
    Map,
    /// Unmapping a range.
    Unmap,
    /// Changing the attributes of a range.
    Protect,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Create => "create",
            Operation::Map => "map",
            Operation::Unmap => "unmap",
            Operation::Protect => "change attributes of",
        })
    }
}

/// Which address an error is about.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Location {
    /// An input address (guest-physical or virtual, named by `kind`).
    Input {
        /// The address space, e.g. `"guest-physical"`.
        kind: &'static str,
        /// The address.
        address: u64,
    },
    /// An output (physical) address.
    Output(PhysAddr),
    /// No particular address (the table as a whole).
    Table,
}

impl Location {
    pub(crate) fn input<A: Address>(address: A) -> Self {
        Location::Input {
            kind: A::KIND,
            address: address.as_u64(),
        }
    }
}

/// Why an operation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reason {
    /// The address or the size is not a multiple of 4 KiB.
    Unaligned,
    /// The range is empty.
    EmptyRange,
    /// The range ends beyond the format's address space of `bits` bits (or is not canonical).
    OutOfRange {
        /// Size of the address space in bits.
        bits: u32,
    },
    /// Part of the range is already mapped and replacing was not asked for.
    AlreadyMapped,
    /// Part of the range is not mapped, so its attributes cannot change.
    NotMapped,
    /// The frame allocator ran out of frames.
    OutOfMemory {
        /// Frames the operation needed.
        frames: usize,
    },
    /// The format cannot encode these attributes.
    UnsupportedAttributes {
        /// The attributes asked for.
        attributes: Attributes,
        /// Why the format cannot encode them.
        why: &'static str,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unaligned => f.write_str("not aligned to 4 KiB"),
            Reason::EmptyRange => f.write_str("the range is empty"),
            Reason::OutOfRange { bits } => {
                write!(f, "outside the {bits}-bit address space of the format")
            }
            Reason::AlreadyMapped => {
                f.write_str("already mapped (ask for replacement to overwrite)")
            }
            Reason::NotMapped => f.write_str("not mapped"),
            Reason::OutOfMemory { frames } => write!(
                f,
                "out of memory for translation tables ({frames} frame(s) needed)"
            ),
            Reason::UnsupportedAttributes { attributes, why } => {
                write!(f, "attributes {attributes} not supported: {why}")
            }
        }
    }
}

/// A failed table operation. The table is unchanged when an operation returns this.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Error {
    /// What was being done.
    pub operation: Operation,
    /// The address the failure is about.
    pub location: Location,
    /// Why it failed.
    pub reason: Reason,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} ", self.operation)?;
        match self.location {
            Location::Input { kind, address } => write!(f, "{kind} {address:#x}")?,
            Location::Output(pa) => write!(f, "to physical {pa}")?,
            Location::Table => f.write_str("translation table")?,
        }
        write!(f, ": {}", self.reason)
    }
}

impl core::error::Error for Error {}

/// A format parameter that the architecture does not allow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConfigError {
    /// The input address size is outside what the format supports.
    InputSize {
        /// The size asked for, in bits.
        bits: u32,
        /// Smallest supported size.
        min: u32,
        /// Largest supported size.
        max: u32,
    },
    /// The input address size is larger than the physical address size given for the
    /// translation control register.
    InputLargerThanPhysical {
        /// Input size in bits.
        input: u32,
        /// Physical address size in bits.
        physical: u32,
    },
    /// A VMID does not fit the chosen VMID width.
    VmidTooWide {
        /// The VMID.
        vmid: u16,
    },
    /// A table root is not aligned as the register requires.
    UnalignedRoot(PhysAddr),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::InputSize { bits, min, max } => write!(
                f,
                "input address size of {bits} bits not supported (must be {min} to {max})"
            ),
            ConfigError::InputLargerThanPhysical { input, physical } => write!(
                f,
                "input address size of {input} bits exceeds the {physical}-bit physical address size"
            ),
            ConfigError::VmidTooWide { vmid } => {
                write!(f, "VMID {vmid} does not fit in 8 bits (use 16-bit VMIDs)")
            }
            ConfigError::UnalignedRoot(pa) => {
                write!(f, "table root {pa} is not aligned to its size")
            }
        }
    }
}

impl core::error::Error for ConfigError {}
