//! A guest's linear address translated through its own 4-level page tables (long mode), to
//! read the instruction that faulted on an emulated register (AMD APM Vol. 2 §5.3, Intel SDM
//! Vol. 3A §4.5). The guest's tables are read through `read`, which refuses what the guest
//! does not own; nothing is written (no accessed or dirty bits).

use core::fmt;

/// Present.
const P: u64 = 1 << 0;
/// A large page (PDPTE: 1 GiB, PDE: 2 MiB).
const PS: u64 = 1 << 7;
/// The physical-address bits of an entry (51:12).
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// Why a linear address does not translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// An entry on the way is not present (the level: 4 = PML4 ... 1 = PT).
    NotPresent {
        /// The level.
        level: u8,
    },
    /// The guest's table at this guest-physical address is not the guest's memory.
    Unreadable(u64),
    /// The address is not canonical.
    NonCanonical(u64),
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPresent { level } => write!(f, "not present at level {level}"),
            Self::Unreadable(at) => write!(f, "a page table at {at:#x} is not the guest's memory"),
            Self::NonCanonical(va) => write!(f, "{va:#x} is not canonical"),
        }
    }
}

impl core::error::Error for WalkError {}

/// Translates `linear` through the 4-level tables at `cr3`; `read` reads the 8-byte entry at a
/// guest-physical address, or `None` if the guest does not own it.
pub fn translate(
    cr3: u64,
    linear: u64,
    read: impl Fn(u64) -> Option<u64>,
) -> Result<u64, WalkError> {
    let top = linear >> 47;
    if top != 0 && top != 0x1_ffff {
        return Err(WalkError::NonCanonical(linear));
    }
    let mut table = cr3 & ADDRESS;
    for level in (1..=4u8).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let index = (linear >> shift) & 0x1ff;
        let at = table + index * 8;
        let entry = read(at).ok_or(WalkError::Unreadable(at))?;
        if entry & P == 0 {
            return Err(WalkError::NotPresent { level });
        }
        if level == 1 || (level <= 3 && entry & PS != 0) {
            let page = entry & ADDRESS & !((1u64 << shift) - 1);
            return Ok(page | (linear & ((1u64 << shift) - 1)));
        }
        table = entry & ADDRESS;
    }
    unreachable!("level 1 always returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Page tables in a map of guest-physical addresses to entries.
    struct Tables(HashMap<u64, u64>);

    impl Tables {
        fn read(&self, at: u64) -> Option<u64> {
            if at >= 0xdead_0000 {
                return None;
            }
            Some(self.0.get(&at).copied().unwrap_or(0))
        }
    }

    #[test]
    fn four_kib_two_mib_and_one_gib_pages() {
        let va: u64 = 0xffff_ffff_8100_1234;
        let (l4, l3, l2, l1) = (
            (va >> 39) & 0x1ff,
            (va >> 30) & 0x1ff,
            (va >> 21) & 0x1ff,
            (va >> 12) & 0x1ff,
        );
        let mut t = HashMap::new();
        t.insert(0x1000 + l4 * 8, 0x2000 | P);
        t.insert(0x2000 + l3 * 8, 0x3000 | P);
        t.insert(0x3000 + l2 * 8, 0x4000 | P);
        t.insert(0x4000 + l1 * 8, 0x0123_4000 | P | 1 << 63);
        let tables = Tables(t);
        assert_eq!(translate(0x1000, va, |a| tables.read(a)), Ok(0x0123_4234));
        // The same address through a 2 MiB page.
        let mut t = tables.0.clone();
        t.insert(0x3000 + l2 * 8, 0x0a00_0000 | P | PS);
        let tables = Tables(t);
        assert_eq!(
            translate(0x1000, va, |a| tables.read(a)),
            Ok(0x0a00_0000 | (va & 0x1f_ffff))
        );
        // And through a 1 GiB page.
        let mut t = tables.0.clone();
        t.insert(0x2000 + l3 * 8, 0x4000_0000 | P | PS);
        let tables = Tables(t);
        assert_eq!(
            translate(0x1000, va, |a| tables.read(a)),
            Ok(0x4000_0000 | (va & 0x3fff_ffff))
        );
    }

    #[test]
    fn failures_name_the_level_or_the_table() {
        let mut t = HashMap::new();
        t.insert(0x1000, 0x2000 | P);
        t.insert(0x2000, 0xdead_0000 | P);
        let tables = Tables(t);
        assert_eq!(
            translate(0x1000, 0x0, |a| tables.read(a)),
            Err(WalkError::Unreadable(0xdead_0000))
        );
        assert_eq!(
            translate(0x1000, 1 << 39, |a| tables.read(a)),
            Err(WalkError::NotPresent { level: 4 })
        );
        assert_eq!(
            translate(0x1000, 0x0000_8000_0000_0000, |a| tables.read(a)),
            Err(WalkError::NonCanonical(0x0000_8000_0000_0000))
        );
        assert_eq!(
            WalkError::NotPresent { level: 2 }.to_string(),
            "not present at level 2"
        );
    }
}
