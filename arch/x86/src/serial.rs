//! The console: a 16550 UART on I/O ports (COM1 at 0x3f8 on PCs and QEMU's q35), 115200
//! baud, 8N1, polled. Registers from the PC16550D datasheet.

use core::fmt;

use x86_64::instructions::port::Port;

/// A 16550 at an I/O port base.
#[derive(Debug)]
pub struct Serial {
    base: u16,
}

/// Transmit holding register, and divisor latch low with DLAB.
const THR: u16 = 0;
/// Interrupt enable, and divisor latch high with DLAB.
const IER: u16 = 1;
/// FIFO control.
const FCR: u16 = 2;
/// Line control: bit 7 DLAB, bits 1:0 word length.
const LCR: u16 = 3;
/// Modem control: DTR, RTS, OUT2.
const MCR: u16 = 4;
/// Line status: bit 5 transmit holding register empty.
const LSR: u16 = 5;

impl Serial {
    /// The UART at `base`, set to 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn new(base: u16) -> Self {
        let serial = Self { base };
        serial.out(IER, 0);
        serial.out(LCR, 0x80);
        serial.out(THR, 1);
        serial.out(IER, 0);
        serial.out(LCR, 0x03);
        serial.out(FCR, 0xc7);
        serial.out(MCR, 0x0b);
        serial
    }

    fn out(&self, register: u16, value: u8) {
        let mut port = Port::<u8>::new(self.base + register);
        // SAFETY: the UART's ports are the hypervisor's (no cell is given them); writing its
        // registers has no effect on memory.
        unsafe { port.write(value) };
    }

    fn status(&self) -> u8 {
        let mut port = Port::<u8>::new(self.base + LSR);
        // SAFETY: reading the line status register has no side effect.
        unsafe { port.read() }
    }

    /// The UART at `base` as the boot CPU set it up, without touching its settings.
    pub const fn quiet(base: u16) -> Self {
        Self { base }
    }

    /// Sends one byte, waiting for room.
    pub fn put(&self, byte: u8) {
        while self.status() & 1 << 5 == 0 {
            core::hint::spin_loop();
        }
        self.out(THR, byte);
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.put(b'\r');
            }
            self.put(byte);
        }
        Ok(())
    }
}
