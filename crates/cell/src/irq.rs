//! Sets of interrupt lines.

use core::fmt;

/// Words of the bitmap.
const WORDS: usize = (IrqSet::LINES / 64) as usize;

/// A set of interrupt lines 0 to [`IrqSet::LINES`]` - 1` (GIC INTIDs, x86 GSIs), as a bitmap.
///
/// 1024 lines cover every GIC SPI (INTIDs 32 to 1019) and every x86 GSI the configuration
/// format allows; GICv3 extended SPIs (INTIDs 4096 and up) are not supported.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IrqSet {
    words: [u64; WORDS],
}

impl IrqSet {
    /// Lines a set can hold.
    pub const LINES: u32 = 1024;

    /// The empty set.
    pub const fn new() -> Self {
        IrqSet { words: [0; WORDS] }
    }

    /// The bitmap: bit `n % 64` of word `n / 64` is line `n`.
    pub const fn words(&self) -> &[u64; WORDS] {
        &self.words
    }

    /// Whether the line is in the set.
    pub const fn contains(&self, line: u32) -> bool {
        line < Self::LINES && self.words[(line / 64) as usize] & (1 << (line % 64)) != 0
    }

    /// Adds a line; `false` if it is beyond [`IrqSet::LINES`].
    pub fn insert(&mut self, line: u32) -> bool {
        if line >= Self::LINES {
            return false;
        }
        self.words[(line / 64) as usize] |= 1 << (line % 64);
        true
    }

    /// Removes a line.
    pub fn remove(&mut self, line: u32) {
        if line < Self::LINES {
            self.words[(line / 64) as usize] &= !(1 << (line % 64));
        }
    }

    /// The lines in either set.
    pub fn union(&self, other: &IrqSet) -> IrqSet {
        let mut words = self.words;
        for (word, theirs) in words.iter_mut().zip(other.words) {
            *word |= theirs;
        }
        IrqSet { words }
    }

    /// The lines in `self` but not in `other`.
    pub fn difference(&self, other: &IrqSet) -> IrqSet {
        let mut words = self.words;
        for (word, theirs) in words.iter_mut().zip(other.words) {
            *word &= !theirs;
        }
        IrqSet { words }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The number of lines.
    pub fn len(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// The lines, in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u32> + Clone + '_ {
        (0..Self::LINES).filter(|&line| self.contains(line))
    }

    /// Runs of consecutive lines as `(first, last)`, in ascending order.
    pub fn runs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut lines = self.iter().peekable();
        core::iter::from_fn(move || {
            let first = lines.next()?;
            let mut last = first;
            while lines.next_if_eq(&(last + 1)).is_some() {
                last += 1;
            }
            Some((first, last))
        })
    }
}

/// `32-287, 300`; `none` when empty.
impl fmt::Display for IrqSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, (first, last)) in self.runs().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for IrqSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IrqSet({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_runs() {
        let mut set = IrqSet::new();
        assert!(set.is_empty());
        for line in (32..40).chain([300, 1023]) {
            assert!(set.insert(line));
        }
        assert!(!set.insert(1024));
        assert!(!set.contains(1024));
        assert_eq!(set.len(), 10);
        set.remove(33);
        assert!(!set.contains(33));
        let mut text = heapless::String::<64>::new();
        core::fmt::write(&mut text, format_args!("{set}")).unwrap();
        assert_eq!(text.as_str(), "32, 34-39, 300, 1023");
        assert_eq!(set.iter().next_back(), Some(1023));
        let other = {
            let mut s = IrqSet::new();
            s.insert(300);
            s.insert(5);
            s
        };
        assert_eq!(set.difference(&other).len(), 8);
        assert_eq!(set.union(&other).len(), 10);
    }
}
