//! The program's text: the address argument and the lines it prints, without allocation.

/// A decimal or `0x` hexadecimal address (`_` may separate digits).
pub fn parse_address(text: &[u8]) -> Option<u64> {
    let (digits, radix) = match text {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (text, 10),
    };
    let mut value: u64 = 0;
    let mut any = false;
    for &byte in digits {
        if byte == b'_' {
            continue;
        }
        let digit = (byte as char).to_digit(radix)?;
        value = value
            .checked_mul(u64::from(radix))?
            .checked_add(u64::from(digit))?;
        any = true;
    }
    any.then_some(value)
}

/// A line being built in a fixed buffer (what does not fit is dropped).
pub struct Line {
    bytes: [u8; 96],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            bytes: [0; 96],
            len: 0,
        }
    }

    /// Appends `text`.
    pub fn text(&mut self, text: &str) -> &mut Self {
        for &byte in text.as_bytes() {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = byte;
                self.len += 1;
            }
        }
        self
    }

    /// Appends `value` in `0x` hexadecimal, without leading zeros.
    pub fn hex(&mut self, value: u64) -> &mut Self {
        self.text("0x");
        let digits = (64 - value.leading_zeros()).div_ceil(4).max(1);
        for index in (0..digits).rev() {
            let nibble = (value >> (index * 4)) & 0xf;
            let digit = b"0123456789abcdef"[nibble as usize];
            self.text(core::str::from_utf8(&[digit]).unwrap_or("?"));
        }
        self
    }

    /// Appends `value` in decimal.
    pub fn decimal(&mut self, mut value: u32) -> &mut Self {
        let mut digits = [0u8; 10];
        let mut count = 0;
        loop {
            digits[count] = b'0' + (value % 10) as u8;
            count += 1;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        for &digit in digits[..count].iter().rev() {
            self.text(core::str::from_utf8(&[digit]).unwrap_or("?"));
        }
        self
    }

    /// The line so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(parse_address(b"0x0b00_0000"), Some(0x0b00_0000));
        assert_eq!(parse_address(b"0X10"), Some(16));
        assert_eq!(parse_address(b"4096"), Some(4096));
        assert_eq!(parse_address(b"0x"), None);
        assert_eq!(parse_address(b""), None);
        assert_eq!(parse_address(b"0xg"), None);
        assert_eq!(parse_address(b"-1"), None);
        assert_eq!(parse_address(b"0x1_0000_0000_0000_0000"), None);
    }

    #[test]
    fn builds_lines() {
        let mut line = Line::new();
        line.text("devmem32: ")
            .hex(0xb00_0000)
            .text(" on CPU ")
            .decimal(12)
            .text(" ")
            .hex(0)
            .text(" ")
            .decimal(0)
            .text("\n");
        assert_eq!(line.as_bytes(), b"devmem32: 0xb000000 on CPU 12 0x0 0\n");
        let mut long = Line::new();
        for _ in 0..20 {
            long.text("0123456789");
        }
        assert_eq!(long.as_bytes().len(), 96);
        let mut max = Line::new();
        max.hex(u64::MAX).decimal(u32::MAX);
        assert_eq!(max.as_bytes(), b"0xffffffffffffffff4294967295");
    }
}
