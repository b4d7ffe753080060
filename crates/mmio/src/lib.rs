//! # cellvisor-mmio
//!
//! Device-register access: the [`Mmio`] trait that drivers and emulators are written against,
//! by byte offset from the start of a device's register frame, and [`MmioRegion`], the real
//! implementation over device memory built on [`safe_mmio`]. Host tests implement [`Mmio`]
//! with fakes that record writes and script what registers read.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

use core::fmt;
use core::ptr::NonNull;

use safe_mmio::fields::ReadWrite;
use safe_mmio::UniqueMmioPointer;

/// 32-bit access to one device's registers, by byte offset from the start of its frame.
///
/// Reads take `&mut self` because reading a register can have side effects (popping a
/// receive FIFO, clearing a status bit), and so that fakes can script and record accesses.
/// 64-bit registers are accessed as two 32-bit halves, low half first, which the devices
/// using this crate allow (e.g. the GIC, IHI 0069 §12.1.3).
pub trait Mmio {
    /// Reads the 32-bit register at `offset`.
    fn read32(&mut self, offset: usize) -> u32;

    /// Writes `value` to the 32-bit register at `offset`.
    fn write32(&mut self, offset: usize, value: u32);

    /// Reads the 64-bit register at `offset` as two 32-bit halves.
    fn read64(&mut self, offset: usize) -> u64 {
        let low = self.read32(offset);
        let high = self.read32(offset + 4);
        (u64::from(high) << 32) | u64::from(low)
    }

    /// Writes the 64-bit register at `offset` as two 32-bit halves, low half first.
    fn write64(&mut self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

impl<M: Mmio + ?Sized> Mmio for &mut M {
    fn read32(&mut self, offset: usize) -> u32 {
        (**self).read32(offset)
    }

    fn write32(&mut self, offset: usize, value: u32) {
        (**self).write32(offset, value);
    }
}

/// The virtual address at which the hypervisor's page tables map a device's register frame
/// (equal to the physical address where devices are identity mapped).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MmioAddr(usize);

impl MmioAddr {
    /// Wraps a virtual address.
    pub const fn new(addr: usize) -> Self {
        Self(addr)
    }

    /// The address as an integer.
    pub const fn as_usize(self) -> usize {
        self.0
    }
}

impl fmt::Debug for MmioAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MmioAddr({:#x})", self.0)
    }
}

/// A device's register frame, accessed with single 32-bit loads and stores.
///
/// An offset outside the frame or not a multiple of 4 is a bug in the driver: debug builds
/// panic, release builds ignore the write and read 0 (a driver bug must not bring the
/// hypervisor down).
#[derive(Debug)]
pub struct MmioRegion {
    registers: UniqueMmioPointer<'static, [ReadWrite<u32>]>,
}

impl MmioRegion {
    /// Takes ownership of the `size` bytes of registers at `base`.
    ///
    /// # Panics
    ///
    /// If `base` is 0.
    ///
    /// # Safety
    ///
    /// - `base` is 4-byte aligned and `[base, base + size)` is mapped in the current
    ///   translation regime, for the rest of the program, as device memory (Arm:
    ///   Device-nGnRE or stronger; x86: uncacheable).
    /// - The range holds only device registers (never memory that Rust code owns), and 32-bit
    ///   reads and writes of them cannot make the device write to such memory (no DMA set-up).
    /// - No other [`MmioRegion`] or driver accesses these registers while this one exists.
    pub unsafe fn new(base: MmioAddr, size: usize) -> Self {
        let first =
            NonNull::new(base.as_usize() as *mut ReadWrite<u32>).expect("MMIO region at address 0");
        let words = NonNull::slice_from_raw_parts(first, size / 4);
        // SAFETY: The caller guarantees that the range is aligned, mapped as device memory for
        // the rest of the program, holds only registers and is accessed by nobody else.
        let registers = unsafe { UniqueMmioPointer::new(words) };
        Self { registers }
    }

    /// Index of the word at `offset`, if it is an aligned offset inside the frame.
    fn index(&self, offset: usize) -> Option<usize> {
        let index = offset / 4;
        let valid = offset.is_multiple_of(4) && index < self.registers.len();
        debug_assert!(valid, "register offset {offset:#x} outside or misaligned");
        valid.then_some(index)
    }
}

impl Mmio for MmioRegion {
    fn read32(&mut self, offset: usize) -> u32 {
        let Some(index) = self.index(offset) else {
            return 0;
        };
        self.registers.get(index).map_or(0, |mut r| r.read())
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let Some(index) = self.index(offset) else {
            return;
        };
        if let Some(mut register) = self.registers.get(index) {
            register.write(value);
        }
    }
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_reads_and_writes_words_in_place() {
        // Ordinary memory stands in for device memory: the access path is the same.
        let frame: &'static mut [u32; 4] = std::boxed::Box::leak(std::boxed::Box::new([0; 4]));
        frame[2] = 0x1234_5678;
        let base = MmioAddr::new(frame.as_mut_ptr() as usize);
        {
            // SAFETY: `frame` is leaked, aligned, 16 bytes long and only reached through
            // `region` while it exists.
            let mut region = unsafe { MmioRegion::new(base, 16) };
            assert_eq!(region.read32(8), 0x1234_5678);
            region.write64(0, 0xdead_beef_0000_0001);
            assert_eq!(region.read64(0), 0xdead_beef_0000_0001);
            assert_eq!(region.read32(4), 0xdead_beef);
        }
        assert_eq!(*frame, [1, 0xdead_beef, 0x1234_5678, 0]);
    }

    #[test]
    fn addr_debug_is_hex() {
        assert_eq!(
            std::format!("{:?}", MmioAddr::new(0x0900_0000)),
            "MmioAddr(0x9000000)"
        );
    }
}
