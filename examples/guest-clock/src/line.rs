//! The line `guest-clock` prints, formatted without allocation.

use core::fmt::{self, Write};

/// Longest line: the prefix, three 20-digit numbers and the words around them, or the prefix,
/// a reason for the missing frequency of up to 60 bytes and one number.
pub const CAPACITY: usize = 160;

/// A line in a fixed buffer.
pub struct Line {
    bytes: [u8; CAPACITY],
    len: usize,
}

impl Line {
    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len.checked_add(text.len()).ok_or(fmt::Error)?;
        self.bytes
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `ticks` of a counter running at `frequency` Hz as whole seconds and microseconds
/// (rounded down); `None` for a zero frequency.
pub fn seconds(ticks: u64, frequency: u64) -> Option<(u64, u32)> {
    if frequency == 0 {
        return None;
    }
    // Wide enough for any pair of 64-bit values: ticks * 10^6 < 2^84.
    let micros = u128::from(ticks) * 1_000_000 / u128::from(frequency);
    let seconds = (micros / 1_000_000) as u64;
    let fraction = (micros % 1_000_000) as u32;
    Some((seconds, fraction))
}

/// The output line, ending with a newline; `no_frequency` says why there is no time if
/// `frequency` is 0.
pub fn guest_time(ticks: u64, frequency: u64, no_frequency: &str) -> Line {
    let mut line = Line {
        bytes: [0; CAPACITY],
        len: 0,
    };
    // CAPACITY holds the longest line, reasons of up to 60 bytes included, so the writes
    // cannot fail.
    let _ = match seconds(ticks, frequency) {
        Some((seconds, micros)) => writeln!(
            line,
            "cellvisor-initramfs: guest time {seconds}.{micros:06} s ({ticks} ticks at {frequency} Hz)"
        ),
        None => writeln!(
            line,
            "cellvisor-initramfs: guest time unknown: {no_frequency} ({ticks} ticks)"
        ),
    };
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why arm64 has no time.
    const CNTFRQ: &str = "CNTFRQ_EL0 is 0";

    fn text(line: &Line) -> &str {
        core::str::from_utf8(line.as_bytes()).unwrap()
    }

    #[test]
    fn formats_seconds_with_six_decimals() {
        assert_eq!(
            text(&guest_time(146_604_875, 62_500_000, CNTFRQ)),
            "cellvisor-initramfs: guest time 2.345678 s (146604875 ticks at 62500000 Hz)\n"
        );
        assert_eq!(
            text(&guest_time(5, 1_000_000_000, CNTFRQ)),
            "cellvisor-initramfs: guest time 0.000000 s (5 ticks at 1000000000 Hz)\n"
        );
    }

    #[test]
    fn survives_extreme_values() {
        assert_eq!(seconds(u64::MAX, 1), Some((u64::MAX, 0)));
        assert_eq!(seconds(u64::MAX, u64::MAX), Some((1, 0)));
        assert_eq!(seconds(1, 0), None);
        let longest = guest_time(u64::MAX, 1, CNTFRQ);
        assert!(text(&longest).ends_with(" Hz)\n"));
        assert!(text(&guest_time(u64::MAX, 3, CNTFRQ)).contains(&u64::MAX.to_string()));
        assert_eq!(
            text(&guest_time(7, 0, CNTFRQ)),
            "cellvisor-initramfs: guest time unknown: CNTFRQ_EL0 is 0 (7 ticks)\n"
        );
        let reason = "the TSC frequency could not be measured";
        assert_eq!(
            text(&guest_time(u64::MAX, 0, reason)),
            "cellvisor-initramfs: guest time unknown: the TSC frequency could not be measured \
             (18446744073709551615 ticks)\n"
        );
        let longest_reason = "x".repeat(60);
        assert!(text(&guest_time(u64::MAX, 0, &longest_reason)).ends_with(" ticks)\n"));
    }
}
