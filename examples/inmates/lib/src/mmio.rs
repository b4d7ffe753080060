//! Device registers: the [`Mmio`] contract, [`MmioRegion`] for real devices and, in host tests,
//! `FakeMmio`, an in-memory register file that records every access.
//!
//! With the MMU off every data access is to Device-nGnRnE memory (Arm ARM D8.2.11 "The effects
//! of disabling an address translation stage"), and a hypervisor emulates trapped registers
//! (the GIC distributor, a GICv3 redistributor) from the syndrome of the faulting access,
//! which is only valid for single loads and stores without writeback (Arm ARM D17.2.40,
//! ESR_ELx.ISV). So every access is one `ldr`/`str` of the register's width, written in
//! assembly so that the compiler cannot merge, split or pair it.

/// A block of 32-bit (and some 64-bit) device registers, addressed by byte offset.
pub trait Mmio {
    /// Reads the 32-bit register at `offset` (4-byte aligned).
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset` (4-byte aligned).
    fn write32(&self, offset: usize, value: u32);
    /// Writes the 64-bit register at `offset` (8-byte aligned).
    fn write64(&self, offset: usize, value: u64);

    /// Read-modify-write of the 32-bit register at `offset`: clears `clear`, then sets `set`;
    /// no write if that changes nothing (a hypervisor that emulates the register sees no
    /// needless write to fields of other interrupts).
    fn modify32(&self, offset: usize, clear: u32, set: u32) {
        let value = self.read32(offset);
        let new = (value & !clear) | set;
        if new != value {
            self.write32(offset, new);
        }
    }
}

/// Registers at a fixed address in the inmate's (guest-physical, MMU off) address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioRegion {
    base: usize,
}

impl MmioRegion {
    /// The registers at `base`.
    ///
    /// # Safety
    ///
    /// `base` must be the address of device registers (or memory) that this program may access
    /// with single 32-bit and 64-bit loads and stores at the offsets its users pass, and no
    /// Rust reference may point into the range.
    pub const unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    /// The base address.
    pub const fn base(&self) -> usize {
        self.base
    }
}

impl Mmio for MmioRegion {
    fn read32(&self, offset: usize) -> u32 {
        let address = self.base + offset;
        debug_assert!(address.is_multiple_of(4));
        #[cfg(target_arch = "aarch64")]
        {
            let value: u32;
            // SAFETY: `MmioRegion::new`'s contract: the address may be read with one 32-bit
            // load. The load touches no Rust-visible memory.
            unsafe {
                core::arch::asm!(
                    "ldr {value:w}, [{address}]",
                    value = out(reg) value,
                    address = in(reg) address,
                    options(nostack, preserves_flags),
                );
            }
            value
        }
        #[cfg(not(target_arch = "aarch64"))]
        // SAFETY: `MmioRegion::new`'s contract: the address may be read with one 32-bit load.
        unsafe {
            core::ptr::read_volatile(address as *const u32)
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let address = self.base + offset;
        debug_assert!(address.is_multiple_of(4));
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `MmioRegion::new`'s contract: the address may be written with one 32-bit
        // store, which changes no Rust-visible memory.
        unsafe {
            core::arch::asm!(
                "str {value:w}, [{address}]",
                value = in(reg) value,
                address = in(reg) address,
                options(nostack, preserves_flags),
            );
        }
        #[cfg(not(target_arch = "aarch64"))]
        // SAFETY: `MmioRegion::new`'s contract: the address may be written with one 32-bit
        // store.
        unsafe {
            core::ptr::write_volatile(address as *mut u32, value);
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        let address = self.base + offset;
        debug_assert!(address.is_multiple_of(8));
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `MmioRegion::new`'s contract: the address may be written with one 64-bit
        // store, which changes no Rust-visible memory.
        unsafe {
            core::arch::asm!(
                "str {value}, [{address}]",
                value = in(reg) value,
                address = in(reg) address,
                options(nostack, preserves_flags),
            );
        }
        #[cfg(not(target_arch = "aarch64"))]
        // SAFETY: `MmioRegion::new`'s contract: the address may be written with one 64-bit
        // store.
        unsafe {
            core::ptr::write_volatile(address as *mut u64, value);
        }
    }
}

#[cfg(test)]
pub(crate) use fake::{Access, FakeMmio};

#[cfg(test)]
mod fake {
    use super::Mmio;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, VecDeque};
    use std::vec::Vec;

    /// One register access seen by a [`FakeMmio`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Access {
        Read32(usize, u32),
        Write32(usize, u32),
        Write64(usize, u64),
    }

    /// In-memory registers: a read returns the next scripted value for its offset if there is
    /// one, else the last value written (0 initially). Every access is logged.
    #[derive(Debug, Default)]
    pub struct FakeMmio {
        values: RefCell<BTreeMap<usize, u64>>,
        scripted: RefCell<BTreeMap<usize, VecDeque<u32>>>,
        log: RefCell<Vec<Access>>,
    }

    impl FakeMmio {
        pub fn new() -> Self {
            Self::default()
        }

        /// Sets a register's value without logging.
        pub fn set(&self, offset: usize, value: u32) {
            self.values.borrow_mut().insert(offset, value.into());
        }

        /// The value a register holds (0 if never written).
        pub fn get(&self, offset: usize) -> u64 {
            self.values.borrow().get(&offset).copied().unwrap_or(0)
        }

        /// Queues values that the next reads of `offset` return, one each.
        pub fn script(&self, offset: usize, values: &[u32]) {
            self.scripted
                .borrow_mut()
                .entry(offset)
                .or_default()
                .extend(values);
        }

        /// The writes so far, in order.
        pub fn writes(&self) -> Vec<Access> {
            self.log
                .borrow()
                .iter()
                .copied()
                .filter(|a| !matches!(a, Access::Read32(..)))
                .collect()
        }
    }

    impl Mmio for FakeMmio {
        fn read32(&self, offset: usize) -> u32 {
            assert_eq!(offset % 4, 0, "unaligned 32-bit read at {offset:#x}");
            let scripted = self
                .scripted
                .borrow_mut()
                .get_mut(&offset)
                .and_then(VecDeque::pop_front);
            let value = scripted.unwrap_or_else(|| self.get(offset) as u32);
            self.log.borrow_mut().push(Access::Read32(offset, value));
            value
        }

        fn write32(&self, offset: usize, value: u32) {
            assert_eq!(offset % 4, 0, "unaligned 32-bit write at {offset:#x}");
            self.values.borrow_mut().insert(offset, value.into());
            self.log.borrow_mut().push(Access::Write32(offset, value));
        }

        fn write64(&self, offset: usize, value: u64) {
            assert_eq!(offset % 8, 0, "unaligned 64-bit write at {offset:#x}");
            self.values.borrow_mut().insert(offset, value);
            self.log.borrow_mut().push(Access::Write64(offset, value));
        }
    }
}
