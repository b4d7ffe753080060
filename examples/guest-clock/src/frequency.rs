//! A counter's frequency from two samples of it and of a nanosecond clock: how x86-64 learns
//! the TSC frequency, which no register holds for user space.

/// Nanoseconds per second.
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A counter value and a clock reading, in nanoseconds, taken at (about) the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The counter.
    pub count: u64,
    /// The clock.
    pub nanoseconds: u64,
}

impl Sample {
    /// The sample of a clock read between two counter reads: the clock paired with the
    /// midpoint of the counter, which halves the error the read of the clock adds.
    pub fn bracketed(before: u64, nanoseconds: u64, after: u64) -> Self {
        // A counter that went backwards (a move to a CPU whose counter is behind) keeps the
        // first read.
        let count = before + after.saturating_sub(before) / 2;
        Self { count, nanoseconds }
    }

    /// A clock reading as `struct timespec` holds it, in nanoseconds; `None` if it is negative
    /// or does not fit.
    pub fn nanoseconds(seconds: i64, nanoseconds: i64) -> Option<u64> {
        let seconds = u64::try_from(seconds).ok()?;
        let nanoseconds = u64::try_from(nanoseconds).ok()?;
        seconds
            .checked_mul(NANOS_PER_SECOND)?
            .checked_add(nanoseconds)
    }
}

/// The counter's frequency in Hz between `start` and `end` (rounded down); 0 if the clock did
/// not advance, either went backwards or the frequency does not fit.
pub fn between(start: Sample, end: Sample) -> u64 {
    let (Some(ticks), Some(nanoseconds)) = (
        end.count.checked_sub(start.count),
        end.nanoseconds.checked_sub(start.nanoseconds),
    ) else {
        return 0;
    };
    if nanoseconds == 0 {
        return 0;
    }
    // Wide enough for any pair of 64-bit values: ticks * 10^9 < 2^94.
    let hertz = u128::from(ticks) * u128::from(NANOS_PER_SECOND) / u128::from(nanoseconds);
    u64::try_from(hertz).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(count: u64, nanoseconds: u64) -> Sample {
        Sample { count, nanoseconds }
    }

    #[test]
    fn divides_ticks_by_time() {
        // 20 ms of a 2.5 GHz counter.
        let start = sample(1_000_000, 5_000_000_000);
        let end = sample(51_000_000, 5_020_000_000);
        assert_eq!(between(start, end), 2_500_000_000);
        // Rounded down.
        assert_eq!(between(sample(0, 0), sample(2, 3)), 666_666_666);
    }

    #[test]
    fn refuses_what_cannot_be_a_frequency() {
        assert_eq!(between(sample(0, 7), sample(100, 7)), 0);
        assert_eq!(between(sample(100, 0), sample(50, 10)), 0);
        assert_eq!(between(sample(0, 10), sample(50, 0)), 0);
        // More than u64::MAX Hz.
        assert_eq!(between(sample(0, 0), sample(u64::MAX, 1)), 0);
        assert_eq!(
            between(sample(0, 0), sample(u64::MAX, 1_000_000_000)),
            u64::MAX
        );
    }

    #[test]
    fn pairs_the_clock_with_the_middle_of_the_counter() {
        assert_eq!(Sample::bracketed(100, 5, 110), sample(105, 5));
        assert_eq!(
            Sample::bracketed(u64::MAX - 1, 5, u64::MAX),
            sample(u64::MAX - 1, 5)
        );
        assert_eq!(Sample::bracketed(100, 5, 90), sample(100, 5));
    }

    #[test]
    fn reads_timespecs() {
        assert_eq!(Sample::nanoseconds(2, 345), Some(2_000_000_345));
        assert_eq!(Sample::nanoseconds(-1, 0), None);
        assert_eq!(Sample::nanoseconds(0, -1), None);
        assert_eq!(Sample::nanoseconds(i64::MAX, 0), None);
        assert_eq!(Sample::nanoseconds(0, 999_999_999), Some(999_999_999));
    }
}
