//! The management interface as the tool sees it: the control page's registers and the data
//! window, behind the [`Device`] trait so that the command logic runs on the host against a
//! fake hypervisor (see `fake.rs`), and on a cellvisor system against `/dev/mem`
//! (see `devmem.rs`).
//!
//! Both areas are Device memory for the CPU (Linux maps `/dev/mem` outside its RAM
//! uncached), where an unaligned access faults and `memcpy` may use unaligned or paired
//! accesses. So the trait offers single aligned 32-bit and 64-bit accesses only, and bulk data
//! moves through the window 8 bytes at a time ([`write_window`], [`read_window`]).

/// Single aligned accesses to the control page and the data window.
///
/// Offsets are byte offsets from the start of the area. Control-page offsets come from
/// `cellvisor_abi::mgmt` and are naturally aligned; window offsets are multiples of 8 below
/// [`Device::window_len`]. Implementations may panic on anything else: it is a bug in the
/// tool, not an input error.
pub trait Device {
    /// A 32-bit load from the control page.
    fn read32(&mut self, offset: usize) -> u32;
    /// A 64-bit load from the control page.
    fn read64(&mut self, offset: usize) -> u64;
    /// A 32-bit store to the control page.
    fn write32(&mut self, offset: usize, value: u32);
    /// A 64-bit store to the control page.
    fn write64(&mut self, offset: usize, value: u64);
    /// The size of the mapped data window in bytes (a multiple of 8).
    fn window_len(&self) -> usize;
    /// A 64-bit load from the data window.
    fn window_read64(&mut self, offset: usize) -> u64;
    /// A 64-bit store to the data window.
    fn window_write64(&mut self, offset: usize, value: u64);
}

impl<D: Device + ?Sized> Device for Box<D> {
    fn read32(&mut self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn read64(&mut self, offset: usize) -> u64 {
        (**self).read64(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn write64(&mut self, offset: usize, value: u64) {
        (**self).write64(offset, value)
    }
    fn window_len(&self) -> usize {
        (**self).window_len()
    }
    fn window_read64(&mut self, offset: usize) -> u64 {
        (**self).window_read64(offset)
    }
    fn window_write64(&mut self, offset: usize, value: u64) {
        (**self).window_write64(offset, value)
    }
}

/// Copies `data` to the start of the data window, 8 bytes at a time, the last word padded
/// with zeros. `data` must fit the window.
pub fn write_window(device: &mut (impl Device + ?Sized), data: &[u8]) {
    assert!(data.len() <= device.window_len(), "data beyond the window");
    for (index, chunk) in data.chunks(8).enumerate() {
        let mut word = [0; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        device.window_write64(index * 8, u64::from_le_bytes(word));
    }
}

/// Reads `len` bytes from the start of the data window, 8 bytes at a time (at most the
/// window).
pub fn read_window(device: &mut (impl Device + ?Sized), len: usize) -> Vec<u8> {
    let len = len.min(device.window_len());
    let mut data = Vec::with_capacity(len.next_multiple_of(8));
    for offset in (0..len).step_by(8) {
        data.extend_from_slice(&device.window_read64(offset).to_le_bytes());
    }
    data.truncate(len);
    data
}

/// Reads the NUL-terminated text at the start of the window (at most `max` bytes), as the
/// hypervisor leaves its error messages; invalid UTF-8 is replaced.
pub fn read_window_text(device: &mut (impl Device + ?Sized), max: usize) -> String {
    let max = max.min(device.window_len());
    let mut text = Vec::new();
    'words: for offset in (0..max).step_by(8) {
        for byte in device.window_read64(offset).to_le_bytes() {
            if byte == 0 || text.len() == max {
                break 'words;
            }
            text.push(byte);
        }
    }
    String::from_utf8_lossy(&text).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window that records every access and refuses unaligned ones.
    struct Window {
        words: Vec<u64>,
        accesses: usize,
    }

    impl Device for Window {
        fn read32(&mut self, _: usize) -> u32 {
            unreachable!()
        }
        fn read64(&mut self, _: usize) -> u64 {
            unreachable!()
        }
        fn write32(&mut self, _: usize, _: u32) {
            unreachable!()
        }
        fn write64(&mut self, _: usize, _: u64) {
            unreachable!()
        }
        fn window_len(&self) -> usize {
            self.words.len() * 8
        }
        fn window_read64(&mut self, offset: usize) -> u64 {
            assert_eq!(offset % 8, 0);
            self.accesses += 1;
            self.words[offset / 8]
        }
        fn window_write64(&mut self, offset: usize, value: u64) {
            assert_eq!(offset % 8, 0);
            self.accesses += 1;
            self.words[offset / 8] = value;
        }
    }

    #[test]
    fn copies_eight_bytes_at_a_time_and_pads_the_tail() {
        let mut window = Window {
            words: vec![u64::MAX; 4],
            accesses: 0,
        };
        write_window(&mut window, b"0123456789");
        assert_eq!(window.accesses, 2);
        assert_eq!(window.words[0], u64::from_le_bytes(*b"01234567"));
        assert_eq!(window.words[1], u64::from_le_bytes(*b"89\0\0\0\0\0\0"));
        assert_eq!(window.words[2], u64::MAX);
        assert_eq!(read_window(&mut window, 10), b"0123456789");
        assert_eq!(read_window(&mut window, 100).len(), 32);
        assert_eq!(read_window_text(&mut window, 64), "0123456789");
        write_window(&mut window, b"");
        assert_eq!(read_window(&mut window, 0), b"");
    }

    #[test]
    fn text_stops_at_the_nul_or_the_limit() {
        let mut window = Window {
            words: vec![u64::from_le_bytes(*b"abcdefgh"); 2],
            accesses: 0,
        };
        assert_eq!(read_window_text(&mut window, 64), "abcdefghabcdefgh");
        assert_eq!(read_window_text(&mut window, 3), "abc");
        window.words[1] = u64::from_le_bytes(*b"x\xffz\0\0\0\0\0");
        assert_eq!(read_window_text(&mut window, 64), "abcdefghx\u{fffd}z");
    }
}
