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

/// VMX's MSR bitmap size: one page (Intel SDM Vol. 3C §25.6.9).
pub const VMX_MSR_BITMAP_SIZE: usize = 4096;

/// The same MSR permissions in VMX's MSR bitmap: one bit per MSR, reads of MSRs 0 to 0x1FFF
/// at byte 0, reads of 0xC000_0000 to 0xC000_1FFF at 1024, writes of the same at 2048 and
/// 3072. The third range of SVM's map (0xC001_0000 up, AMD's own MSRs) has no place there:
/// those MSRs always exit on VMX, as does every MSR outside the two ranges.
pub fn vmx_msr_bitmap(map: &[u8; MSRPM_SIZE]) -> [u8; VMX_MSR_BITMAP_SIZE] {
    let mut bitmap = [0u8; VMX_MSR_BITMAP_SIZE];
    for (range, first) in [0u32, 0xc000_0000].into_iter().enumerate() {
        for offset in 0..MSRS_PER_RANGE {
            let msr = first + offset;
            let (byte, bit) = (offset as usize / 8, offset % 8);
            for (write, base) in [(false, 0), (true, 2048)] {
                if msr_intercepted(map, msr, write) {
                    bitmap[base + range * 1024 + byte] |= 1 << bit;
                }
            }
        }
    }
    bitmap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmx_bitmap_holds_the_same_permissions_in_its_own_layout() {
        let mut map = [0; MSRPM_SIZE];
        intercept_msr(&mut map, 0xc000_0080, true, true).unwrap();
        intercept_msr(&mut map, 0x1b, false, true).unwrap();
        intercept_msr(&mut map, 0x1fff, true, false).unwrap();
        intercept_msr(&mut map, 0xc001_0117, true, true).unwrap();
        let bitmap = vmx_msr_bitmap(&map);
        // EFER (0xC000_0080): bit 0x80 of the high read and high write quarters.
        assert_eq!(bitmap[1024 + 0x10], 1);
        assert_eq!(bitmap[3072 + 0x10], 1);
        // APIC_BASE (0x1B): writes only, bit 27 of the low write quarter.
        assert_eq!(bitmap[3], 0);
        assert_eq!(bitmap[2048 + 3], 1 << 3);
        // 0x1FFF: the last bit of the low read quarter.
        assert_eq!(bitmap[1023], 0x80);
        // AMD's range has no place: nothing else is set.
        assert_eq!(bitmap.iter().map(|b| b.count_ones()).sum::<u32>(), 4);
        // Everything intercepted stays everything.
        assert!(vmx_msr_bitmap(&[0xff; MSRPM_SIZE])
            .iter()
            .all(|&b| b == 0xff));
    }

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
