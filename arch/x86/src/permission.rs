//! SVM's MSR and I/O permission maps (AMD APM Vol. 2 §15.11 "MSR Intercepts" and §15.10.1
//! "I/O Permissions Map"): which RDMSR/WRMSR and IN/OUT of a guest exit to the hypervisor.
//!
//! The MSR map has two bits per MSR (read, then write) for three ranges of 8192 MSRs each;
//! an MSR outside them always exits. The I/O map has one bit per port; a multi-byte access
//! exits if any of its ports' bits is set.

use core::fmt;

/// The MSR permission map's size: two pages.
pub const MSRPM_SIZE: usize = 8192;
/// The I/O permission map's size: three pages (65536 bits and the bits of accesses that run
/// past port 0xffff).
pub const IOPM_SIZE: usize = 12288;

/// The MSR ranges the map covers: first MSR and the byte its bits start at.
const MSR_RANGES: [(u32, usize); 3] = [(0, 0), (0xc000_0000, 0x800), (0xc001_0000, 0x1000)];
/// MSRs per range.
const MSRS_PER_RANGE: u32 = 0x2000;

/// An MSR the map does not cover: its accesses always exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotInMap(pub u32);

impl fmt::Display for NotInMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MSR {:#x} is outside the MSR permission map", self.0)
    }
}

/// Where the read bit of `msr` is: byte and bit; the write bit is the next one.
pub fn msr_bits(msr: u32) -> Result<(usize, u8), NotInMap> {
    MSR_RANGES
        .iter()
        .find(|&&(first, _)| msr >= first && msr - first < MSRS_PER_RANGE)
        .map(|&(first, byte)| {
            let bit = (msr - first) as usize * 2;
            (byte + bit / 8, (bit % 8) as u8)
        })
        .ok_or(NotInMap(msr))
}

/// Makes reads and/or writes of `msr` exit.
pub fn intercept_msr(
    map: &mut [u8; MSRPM_SIZE],
    msr: u32,
    read: bool,
    write: bool,
) -> Result<(), NotInMap> {
    let (byte, bit) = msr_bits(msr)?;
    map[byte] |= u8::from(read) << bit | u8::from(write) << (bit + 1);
    Ok(())
}

/// Lets reads and writes of `msr` through.
pub fn pass_msr(map: &mut [u8; MSRPM_SIZE], msr: u32) -> Result<(), NotInMap> {
    let (byte, bit) = msr_bits(msr)?;
    map[byte] &= !(0b11 << bit);
    Ok(())
}

/// Whether an access to `msr` exits.
pub fn msr_intercepted(map: &[u8; MSRPM_SIZE], msr: u32, write: bool) -> bool {
    match msr_bits(msr) {
        Ok((byte, bit)) => map[byte] >> (bit + u8::from(write)) & 1 != 0,
        Err(NotInMap(_)) => true,
    }
}

/// Makes accesses to the `len` ports from `port` exit.
pub fn intercept_ports(map: &mut [u8; IOPM_SIZE], port: u16, len: u16) {
    for p in u32::from(port)..u32::from(port) + u32::from(len) {
        let p = p as usize;
        map[p / 8] |= 1 << (p % 8);
    }
}

/// Lets accesses to the `len` ports from `port` through (ports beyond 0xffff are ignored).
pub fn pass_ports(map: &mut [u8; IOPM_SIZE], port: u32, len: u32) {
    for p in port..port.saturating_add(len).min(0x1_0000) {
        let p = p as usize;
        map[p / 8] &= !(1 << (p % 8));
    }
}

/// Whether an access of `size` bytes (1, 2 or 4) to `port` exits.
pub fn port_intercepted(map: &[u8; IOPM_SIZE], port: u16, size: u8) -> bool {
    (u32::from(port)..u32::from(port) + u32::from(size)).any(|p| {
        let p = p as usize;
        map[p / 8] >> (p % 8) & 1 != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_bits_follow_the_three_ranges() {
        // APM table 15-5: 0000_0000-0000_1FFF at bytes 0x000-0x7FF, C000_0000-C000_1FFF at
        // 0x800-0xFFF, C001_0000-C001_1FFF at 0x1000-0x17FF.
        assert_eq!(msr_bits(0), Ok((0, 0)));
        assert_eq!(msr_bits(3), Ok((0, 6)));
        assert_eq!(msr_bits(0x1fff), Ok((0x7ff, 6)));
        // EFER: 0x80 * 2 = bit 256 of the second range.
        assert_eq!(msr_bits(0xc000_0080), Ok((0x800 + 32, 0)));
        // VM_HSAVE_PA: 0x117 * 2 = bit 558.
        assert_eq!(msr_bits(0xc001_0117), Ok((0x1000 + 69, 6)));
        assert_eq!(msr_bits(0xc001_1fff), Ok((0x17ff, 6)));
        assert_eq!(msr_bits(0x2000), Err(NotInMap(0x2000)));
        assert_eq!(msr_bits(0x4000_0000), Err(NotInMap(0x4000_0000)));
        assert_eq!(msr_bits(0xc001_2000), Err(NotInMap(0xc001_2000)));
        assert_eq!(
            NotInMap(0x2000).to_string(),
            "MSR 0x2000 is outside the MSR permission map"
        );
    }

    #[test]
    fn only_the_chosen_accesses_exit() {
        let mut map = [0; MSRPM_SIZE];
        intercept_msr(&mut map, 0xc000_0080, true, true).unwrap();
        intercept_msr(&mut map, 0x830, false, true).unwrap();
        assert!(msr_intercepted(&map, 0xc000_0080, false));
        assert!(msr_intercepted(&map, 0xc000_0080, true));
        assert!(!msr_intercepted(&map, 0x830, false));
        assert!(msr_intercepted(&map, 0x830, true));
        // Neighbours are untouched.
        for msr in [0xc000_0081, 0xc000_007f, 0x831, 0x82f, 0x80] {
            assert!(!msr_intercepted(&map, msr, false), "{msr:#x}");
            assert!(!msr_intercepted(&map, msr, true), "{msr:#x}");
        }
        assert_eq!(map.iter().map(|b| b.count_ones()).sum::<u32>(), 3);
        // Outside the map: always.
        assert!(msr_intercepted(&map, 0x4000_0000, false));
        assert_eq!(
            intercept_msr(&mut map, 0x4000_0000, true, true),
            Err(NotInMap(0x4000_0000))
        );
    }

    #[test]
    fn a_passed_msr_no_longer_exits_and_its_neighbours_still_do() {
        let mut map = [0xff; MSRPM_SIZE];
        assert_eq!(pass_msr(&mut map, 0x6e0), Ok(()));
        assert!(!msr_intercepted(&map, 0x6e0, false));
        assert!(!msr_intercepted(&map, 0x6e0, true));
        assert!(msr_intercepted(&map, 0x6df, true));
        assert!(msr_intercepted(&map, 0x6e1, false));
        assert_eq!(pass_msr(&mut map, 0x4000_0000), Err(NotInMap(0x4000_0000)));
    }

    #[test]
    fn multi_byte_port_accesses_exit_if_any_byte_is_intercepted() {
        let mut map = [0; IOPM_SIZE];
        intercept_ports(&mut map, 0x604, 2);
        assert!(port_intercepted(&map, 0x604, 2));
        assert!(port_intercepted(&map, 0x605, 1));
        assert!(port_intercepted(&map, 0x602, 4));
        assert!(!port_intercepted(&map, 0x600, 4));
        assert!(!port_intercepted(&map, 0x606, 2));
        // The last port: its bits run into the map's spare bytes.
        intercept_ports(&mut map, 0xffff, 1);
        assert!(port_intercepted(&map, 0xfffe, 4));
        assert_eq!(map.iter().map(|b| b.count_ones()).sum::<u32>(), 3);
        // Passed again: only what was asked for.
        pass_ports(&mut map, 0x605, 0x1_0000);
        assert!(port_intercepted(&map, 0x604, 1));
        assert!(!port_intercepted(&map, 0x605, 1));
        assert!(!port_intercepted(&map, 0xffff, 1));
        assert_eq!(map.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
    }
}
