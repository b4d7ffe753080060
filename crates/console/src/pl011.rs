//! Arm PrimeCell UART (PL011), transmit side, polled.
//!
//! Register offsets and bits from the *ARM PrimeCell UART (PL011) Technical Reference Manual*,
//! ARM DDI 0183 (r1p5), chapter 3 "Programmers Model". QEMU's `virt` machine has one at
//! physical address `0x0900_0000`.

use core::hint::spin_loop;

use bitflags::bitflags;

use crate::mmio::{Mmio, MmioAddr, MmioRegion};
use crate::uart::Uart;

/// Size of the register frame (TRM 3.2, "Summary of registers": 4 KiB).
pub const FRAME_SIZE: usize = 0x1000;

/// UARTDR, Data Register (TRM 3.3.1): a write pushes bits \[7:0\] into the transmit FIFO.
const UARTDR: usize = 0x000;
/// UARTFR, Flag Register (TRM 3.3.3), read-only.
const UARTFR: usize = 0x018;
/// UARTCR, Control Register (TRM 3.3.8).
const UARTCR: usize = 0x030;

bitflags! {
    /// UARTFR bits the transmitter uses (TRM 3.3.3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Flags: u32 {
        /// BUSY, bit 3: transmitting; set from the moment the transmit FIFO becomes non-empty
        /// until the last stop bit of the last character has left the shift register.
        const BUSY = 1 << 3;
        /// TXFF, bit 5: transmit FIFO full (with FIFOs disabled: holding register full).
        const TXFF = 1 << 5;
        const _ = !0;
    }
}

bitflags! {
    /// UARTCR bits (TRM 3.3.8).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Control: u32 {
        /// UARTEN, bit 0: UART enable.
        const UARTEN = 1 << 0;
        /// LBE, bit 7: loopback enable; the transmitter feeds the receiver instead of the line.
        const LBE = 1 << 7;
        /// TXE, bit 8: transmit enable.
        const TXE = 1 << 8;
        const _ = !0;
    }
}

/// A PL011 UART, transmitting by polling.
///
/// The baud rate and line settings (UARTIBRD, UARTFBRD, UARTLCR_H) are left as firmware or QEMU
/// set them; [`Pl011::init`] only makes sure the transmitter is on.
#[derive(Debug)]
pub struct Pl011<M: Mmio> {
    registers: M,
}

impl<M: Mmio> Pl011<M> {
    /// A driver for the PL011 whose registers `registers` reaches.
    pub const fn new(registers: M) -> Self {
        Self { registers }
    }

    /// Gives the register access back.
    pub fn into_inner(self) -> M {
        self.registers
    }

    /// Makes sure UARTCR has UARTEN and TXE set and LBE clear, without touching the baud rate
    /// or line control registers. Does nothing if that is already so (the usual case after
    /// firmware or QEMU).
    ///
    /// TRM 3.3.8 asks for the control register to be reprogrammed with the UART disabled and
    /// after the current character: if the transmitter is running it is drained first, then
    /// UARTEN is cleared, the new bits are written, and UARTEN is set again.
    pub fn init(&mut self) {
        let control = Control::from_bits_retain(self.registers.read32(UARTCR));
        let wanted = (control | Control::UARTEN | Control::TXE) - Control::LBE;
        if control == wanted {
            return;
        }
        if control.contains(Control::UARTEN | Control::TXE) {
            // Only LBE was wrong: let what is queued drain before switching off.
            self.flush();
        }
        if control.contains(Control::UARTEN) {
            self.write_control(control - Control::UARTEN);
        }
        self.write_control(wanted - Control::UARTEN);
        self.write_control(wanted);
    }

    fn flags(&mut self) -> Flags {
        Flags::from_bits_retain(self.registers.read32(UARTFR))
    }

    fn write_control(&mut self, control: Control) {
        self.registers.write32(UARTCR, control.bits());
    }
}

impl Pl011<MmioRegion> {
    /// A driver for the PL011 whose 4 KiB register frame is mapped at `base`.
    ///
    /// # Safety
    ///
    /// As for [`MmioRegion::new`] with `size` [`FRAME_SIZE`]: `base` maps a PL011's registers as
    /// device memory for the rest of the program, and nothing else drives this UART.
    pub unsafe fn at(base: MmioAddr) -> Self {
        // SAFETY: The caller's guarantees are those MmioRegion::new needs.
        Self::new(unsafe { MmioRegion::new(base, FRAME_SIZE) })
    }
}

impl<M: Mmio> Uart for Pl011<M> {
    fn write_byte(&mut self, byte: u8) {
        while self.flags().contains(Flags::TXFF) {
            spin_loop();
        }
        self.registers.write32(UARTDR, u32::from(byte));
    }

    fn flush(&mut self) {
        while self.flags().contains(Flags::BUSY) {
            spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Access, FakeMmio};

    const TXFF: u32 = 1 << 5;
    const BUSY: u32 = 1 << 3;
    const UARTEN: u32 = 1 << 0;
    const LBE: u32 = 1 << 7;
    const TXE: u32 = 1 << 8;
    const RXE: u32 = 1 << 9;

    fn uart() -> (Pl011<FakeMmio>, FakeMmio) {
        let registers = FakeMmio::new();
        (Pl011::new(registers.clone()), registers)
    }

    #[test]
    fn bytes_reach_the_data_register_in_order() {
        let (mut uart, registers) = uart();
        uart.write_bytes(b"hv!");
        assert_eq!(
            registers.writes(),
            [(UARTDR, 0x68), (UARTDR, 0x76), (UARTDR, 0x21)]
        );
    }

    #[test]
    fn waits_while_the_transmit_fifo_is_full() {
        let (mut uart, registers) = uart();
        registers.script_reads(UARTFR, [TXFF, TXFF | BUSY, TXFF, BUSY]);
        uart.write_byte(b'x');
        // Three polls saw TXFF, the fourth let the write through.
        assert_eq!(
            registers.accesses(),
            [
                Access::Read {
                    offset: UARTFR,
                    value: TXFF
                },
                Access::Read {
                    offset: UARTFR,
                    value: TXFF | BUSY
                },
                Access::Read {
                    offset: UARTFR,
                    value: TXFF
                },
                Access::Read {
                    offset: UARTFR,
                    value: BUSY
                },
                Access::Write {
                    offset: UARTDR,
                    value: u32::from(b'x')
                },
            ]
        );
    }

    #[test]
    fn flush_waits_until_not_busy() {
        let (mut uart, registers) = uart();
        registers.script_reads(UARTFR, [BUSY, BUSY, 0]);
        uart.flush();
        assert_eq!(registers.reads_of(UARTFR), 3);
        assert!(registers.writes().is_empty());
    }

    #[test]
    fn init_leaves_an_enabled_uart_alone() {
        let (mut uart, registers) = uart();
        registers.set(UARTCR, UARTEN | TXE | RXE);
        uart.init();
        assert!(registers.writes().is_empty());
    }

    #[test]
    fn init_enables_a_disabled_uart_keeping_other_bits() {
        let (mut uart, registers) = uart();
        registers.set(UARTCR, RXE);
        uart.init();
        assert_eq!(
            registers.writes(),
            [(UARTCR, RXE | TXE), (UARTCR, RXE | TXE | UARTEN)]
        );
        assert_eq!(registers.reads_of(UARTFR), 0);
    }

    #[test]
    fn init_disables_before_setting_txe() {
        let (mut uart, registers) = uart();
        registers.set(UARTCR, UARTEN | RXE);
        uart.init();
        assert_eq!(
            registers.writes(),
            [
                (UARTCR, RXE),
                (UARTCR, RXE | TXE),
                (UARTCR, RXE | TXE | UARTEN)
            ]
        );
    }

    #[test]
    fn init_drains_then_leaves_loopback() {
        let (mut uart, registers) = uart();
        registers.set(UARTCR, UARTEN | TXE | LBE);
        registers.script_reads(UARTFR, [BUSY, 0]);
        uart.init();
        assert_eq!(registers.reads_of(UARTFR), 2);
        assert_eq!(
            registers.writes(),
            [(UARTCR, TXE | LBE), (UARTCR, TXE), (UARTCR, TXE | UARTEN)]
        );
    }
}
