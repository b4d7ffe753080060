//! Interval coverage, for the checks that a range lies inside granted ranges.

/// The first point of `[start, end)` that none of `ranges` (half-open `(start, end)` pairs)
/// covers, if any.
pub(crate) fn first_uncovered(
    start: u64,
    end: u64,
    ranges: impl Iterator<Item = (u64, u64)> + Clone,
) -> Option<u64> {
    let mut current = start;
    while current < end {
        let reach = ranges
            .clone()
            .filter(|&(s, e)| s <= current && current < e)
            .map(|(_, e)| e)
            .max();
        match reach {
            Some(e) => current = e,
            None => return Some(current),
        }
    }
    None
}
