//! Typed addresses.
//!
//! A physical address, a guest-physical address and a hypervisor virtual address are different
//! things even though all three are 64-bit numbers; mixing them up is a classic hypervisor bug.
//! Each is its own newtype, and a translation format names which kind it takes as input.

use core::fmt;

/// Size of the translation granule (and of a table frame): 4 KiB.
pub const PAGE_SIZE: u64 = 4096;

/// Something that can be the input of a translation: a guest-physical or a virtual address.
pub trait Address: Copy + Eq + Ord + fmt::Debug + fmt::Display {
    /// Short human-readable name of the address space, used in error messages.
    const KIND: &'static str;
    /// Makes an address from its raw value.
    fn new(raw: u64) -> Self;
    /// The raw value.
    fn as_u64(self) -> u64;
}

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Makes an address from its raw value.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// Whether the address is aligned to `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }

            /// The address `offset` bytes further, or `None` on overflow.
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(raw) => Some(Self(raw)),
                    None => None,
                }
            }
        }

        impl Address for $name {
            const KIND: &'static str = $kind;
            fn new(raw: u64) -> Self {
                Self(raw)
            }
            fn as_u64(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_type!(
    /// A host physical address: the output of every translation format and the location of
    /// every table frame.
    PhysAddr,
    "physical"
);
address_type!(
    /// A guest-physical (intermediate physical) address: the input of Arm stage-2, Intel EPT
    /// and AMD NPT translation.
    GuestPhysAddr,
    "guest-physical"
);
address_type!(
    /// A virtual address of the hypervisor itself: the input of the Arm EL2 stage-1 and the
    /// x86-64 host translation.
    VirtAddr,
    "virtual"
);
