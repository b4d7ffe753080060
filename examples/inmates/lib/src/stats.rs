//! Running minimum, average and maximum of a series of measurements, for latency reports.

/// Minimum, maximum, sum and count of `u64` samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinAvgMax {
    count: u64,
    min: u64,
    max: u64,
    sum: u64,
}

impl MinAvgMax {
    /// No samples yet.
    pub const fn new() -> Self {
        Self {
            count: 0,
            min: 0,
            max: 0,
            sum: 0,
        }
    }

    /// Adds a sample.
    pub fn record(&mut self, sample: u64) {
        if self.count == 0 || sample < self.min {
            self.min = sample;
        }
        self.max = self.max.max(sample);
        self.sum = self.sum.saturating_add(sample);
        self.count += 1;
    }

    /// The number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The smallest sample (0 without samples).
    pub fn min(&self) -> u64 {
        self.min
    }

    /// The largest sample (0 without samples).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean, rounded down (0 without samples).
    pub fn avg(&self) -> u64 {
        self.sum.checked_div(self.count).unwrap_or(0)
    }

    /// The same statistics with every value mapped through `f` (e.g. ticks to nanoseconds);
    /// the mean is mapped from the mean.
    pub fn map(&self, f: impl Fn(u64) -> u64) -> (u64, u64, u64) {
        (f(self.min()), f(self.avg()), f(self.max()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_avg_max() {
        let mut stats = MinAvgMax::new();
        assert_eq!((stats.min(), stats.avg(), stats.max()), (0, 0, 0));
        for sample in [5, 3, 10] {
            stats.record(sample);
        }
        assert_eq!(stats.count(), 3);
        assert_eq!((stats.min(), stats.avg(), stats.max()), (3, 6, 10));
        assert_eq!(stats.map(|v| v * 16), (48, 96, 160));
    }
}
