//! The transmit-side contract every console UART fulfils, and text output on top of it.

use core::fmt;

/// A UART the console can transmit on, polled (no interrupts).
pub trait Uart {
    /// Hands `byte` to the transmitter, waiting as long as the transmitter cannot accept it
    /// (transmit FIFO or holding register full). Returns once the byte is queued, which may be
    /// before it has left the wire.
    fn write_byte(&mut self, byte: u8);

    /// Waits until everything written so far has been sent completely (transmit FIFO empty and
    /// shift register idle), e.g. before the CPU stops or the machine resets.
    ///
    /// The default does nothing, for UARTs that cannot tell.
    fn flush(&mut self) {}

    /// Writes `bytes` in order, as-is.
    fn write_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_byte(byte);
        }
    }
}

impl<U: Uart + ?Sized> Uart for &mut U {
    fn write_byte(&mut self, byte: u8) {
        (**self).write_byte(byte);
    }

    fn flush(&mut self) {
        (**self).flush();
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        (**self).write_bytes(bytes);
    }
}

/// [`fmt::Write`] for a [`Uart`], sending every `"\n"` as `"\r\n"` so that serial terminals
/// return to the first column.
///
/// The translation is unconditional: text that already ends its lines with `"\r\n"` comes out
/// as `"\r\r\n"`, which terminals display the same way.
///
/// ```
/// use core::fmt::Write;
/// use cellvisor_console::{CrLfWriter, Uart};
///
/// struct Wire(Vec<u8>);
/// impl Uart for Wire {
///     fn write_byte(&mut self, byte: u8) {
///         self.0.push(byte);
///     }
/// }
///
/// let mut wire = Wire(Vec::new());
/// write!(CrLfWriter::new(&mut wire), "a\nb").unwrap();
/// assert_eq!(wire.0, b"a\r\nb");
/// ```
pub struct CrLfWriter<'a, U: Uart + ?Sized> {
    uart: &'a mut U,
}

impl<'a, U: Uart + ?Sized> CrLfWriter<'a, U> {
    /// Writes text to `uart`.
    pub fn new(uart: &'a mut U) -> Self {
        Self { uart }
    }
}

impl<U: Uart + ?Sized> fmt::Write for CrLfWriter<'_, U> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Send the text between newlines in one call so drivers with a faster bulk path use it.
        let mut lines = text.as_bytes().split(|&byte| byte == b'\n');
        if let Some(first) = lines.next() {
            self.uart.write_bytes(first);
        }
        for line in lines {
            self.uart.write_bytes(b"\r\n");
            self.uart.write_bytes(line);
        }
        Ok(())
    }
}

impl<U: Uart + ?Sized> fmt::Debug for CrLfWriter<'_, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrLfWriter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;
    use std::vec::Vec;

    #[derive(Default)]
    struct Wire {
        bytes: Vec<u8>,
        flushes: usize,
    }

    impl Uart for Wire {
        fn write_byte(&mut self, byte: u8) {
            self.bytes.push(byte);
        }

        fn flush(&mut self) {
            self.flushes += 1;
        }
    }

    fn through_crlf(text: &str) -> Vec<u8> {
        let mut wire = Wire::default();
        CrLfWriter::new(&mut wire).write_str(text).unwrap();
        wire.bytes
    }

    #[test]
    fn newline_becomes_crlf() {
        assert_eq!(through_crlf("one\ntwo\n"), b"one\r\ntwo\r\n");
        assert_eq!(through_crlf("\n\n"), b"\r\n\r\n");
        assert_eq!(through_crlf("no newline"), b"no newline");
        assert_eq!(through_crlf(""), b"");
        assert_eq!(through_crlf("crlf\r\n"), b"crlf\r\r\n");
    }

    #[test]
    fn formatting_goes_through_in_order() {
        let mut wire = Wire::default();
        let (one, all_ones, end) = (1, 255, "end");
        write!(CrLfWriter::new(&mut wire), "{one}-{all_ones:#x}\n{end}").unwrap();
        assert_eq!(wire.bytes, b"1-0xff\r\nend");
    }

    #[test]
    fn mut_reference_forwards() {
        fn use_uart<U: Uart>(mut uart: U) {
            uart.write_bytes(b"ab");
            uart.write_byte(b'c');
            uart.flush();
        }
        let mut wire = Wire::default();
        use_uart(&mut wire);
        assert_eq!(wire.bytes, b"abc");
        assert_eq!(wire.flushes, 1);
    }
}
