//! A polled, transmit-only console on the cell's UART: the Arm PL011 (QEMU `virt`) or the
//! Cadence UART of the Zynq UltraScale+ (ZCU102), and the [`print!`](crate::print!) and
//! [`println!`](crate::println!) macros.
//!
//! The runtime sets the console up from the [`Platform`] before the inmate's main function
//! runs. Output is not locked: a line printed by an interrupt handler can land in the middle
//! of one printed by the main loop.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use cellvisor_abi::comm::{Platform, UART_CADENCE, UART_PL011};

use crate::mmio::{Mmio, MmioRegion};

/// The UART models the console drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartKind {
    /// Arm PrimeCell UART (PL011).
    Pl011,
    /// Cadence UART (Xilinx Zynq UltraScale+ PS UART).
    Cadence,
}

impl UartKind {
    /// The kind for a [`Platform::uart_kind`] value.
    pub fn from_abi(kind: u32) -> Option<Self> {
        match kind {
            UART_PL011 => Some(Self::Pl011),
            UART_CADENCE => Some(Self::Cadence),
            _ => None,
        }
    }

    /// The [`Platform::uart_kind`] value.
    pub fn to_abi(self) -> u32 {
        match self {
            Self::Pl011 => UART_PL011,
            Self::Cadence => UART_CADENCE,
        }
    }

    /// The name printed in messages: `pl011` or `cadence`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pl011 => "pl011",
            Self::Cadence => "cadence",
        }
    }
}

/// PL011 registers and bits (Arm PrimeCell UART (PL011) Technical Reference Manual, 3.2).
mod pl011 {
    /// UARTDR: data.
    pub const DR: usize = 0x00;
    /// UARTFR: flags.
    pub const FR: usize = 0x18;
    /// UARTFR.BUSY: transmitting (until the stop bit of the last byte is out).
    pub const FR_BUSY: u32 = 1 << 3;
    /// UARTFR.TXFF: the transmit FIFO is full.
    pub const FR_TXFF: u32 = 1 << 5;
    /// UARTLCR_H: line control.
    pub const LCR_H: usize = 0x2c;
    /// UARTLCR_H.FEN: FIFOs enabled.
    pub const LCR_H_FEN: u32 = 1 << 4;
    /// UARTLCR_H.WLEN = 0b11: 8 data bits.
    pub const LCR_H_WLEN8: u32 = 0b11 << 5;
    /// UARTCR: control.
    pub const CR: usize = 0x30;
    /// UARTCR.UARTEN: UART enabled.
    pub const CR_UARTEN: u32 = 1 << 0;
    /// UARTCR.TXE: transmitter enabled.
    pub const CR_TXE: u32 = 1 << 8;
}

/// Cadence UART registers and bits (Zynq UltraScale+ Device TRM UG1085, appendix "UART").
mod cadence {
    /// Control.
    pub const CR: usize = 0x00;
    /// CR.TX_EN: transmitter enabled.
    pub const CR_TX_EN: u32 = 1 << 4;
    /// CR.TX_DIS: transmitter disabled (wins over TX_EN).
    pub const CR_TX_DIS: u32 = 1 << 5;
    /// Channel status.
    pub const SR: usize = 0x2c;
    /// SR.TXEMPTY: the transmit FIFO is empty.
    pub const SR_TXEMPTY: u32 = 1 << 3;
    /// SR.TXFULL: the transmit FIFO is full.
    pub const SR_TXFULL: u32 = 1 << 4;
    /// Transmit and receive FIFO.
    pub const FIFO: usize = 0x30;
}

/// Bounds the busy-wait loops: a UART that never drains (not clocked, or not really there)
/// must not hang the inmate for good, so a byte is dropped instead.
const POLL_LIMIT: u32 = 1_000_000;

/// One UART, transmit side, polled.
#[derive(Clone, Copy, Debug)]
pub struct Uart<M: Mmio = MmioRegion> {
    kind: UartKind,
    regs: M,
}

impl<M: Mmio> Uart<M> {
    /// A UART of `kind` with registers `regs`.
    pub const fn new(kind: UartKind, regs: M) -> Self {
        Self { kind, regs }
    }

    /// The model.
    pub fn kind(&self) -> UartKind {
        self.kind
    }

    /// Turns the transmitter on if it is off, keeping the line settings (the baud rate depends
    /// on a reference clock the inmate does not know; whoever owned the UART before, firmware
    /// or the root cell, set it up).
    pub fn enable_transmitter(&self) {
        match self.kind {
            UartKind::Pl011 => {
                let cr = self.regs.read32(pl011::CR);
                let on = pl011::CR_UARTEN | pl011::CR_TXE;
                if cr & on != on {
                    // Word length and FIFOs may be changed only while the UART is disabled
                    // (PL011 TRM 3.3.8).
                    self.regs.write32(pl011::CR, cr & !pl011::CR_UARTEN);
                    self.regs
                        .modify32(pl011::LCR_H, 0, pl011::LCR_H_WLEN8 | pl011::LCR_H_FEN);
                    self.regs.write32(pl011::CR, cr | on);
                }
            }
            UartKind::Cadence => {
                let cr = self.regs.read32(cadence::CR);
                if cr & cadence::CR_TX_EN == 0 || cr & cadence::CR_TX_DIS != 0 {
                    self.regs
                        .write32(cadence::CR, (cr & !cadence::CR_TX_DIS) | cadence::CR_TX_EN);
                }
            }
        }
    }

    /// Sends one byte once the transmit FIFO has room.
    pub fn write_byte(&self, byte: u8) {
        let (status, full, data) = match self.kind {
            UartKind::Pl011 => (pl011::FR, pl011::FR_TXFF, pl011::DR),
            UartKind::Cadence => (cadence::SR, cadence::SR_TXFULL, cadence::FIFO),
        };
        for _ in 0..POLL_LIMIT {
            if self.regs.read32(status) & full == 0 {
                self.regs.write32(data, byte.into());
                return;
            }
        }
    }

    /// Waits until everything written is on the wire.
    pub fn flush(&self) {
        for _ in 0..POLL_LIMIT {
            let done = match self.kind {
                UartKind::Pl011 => self.regs.read32(pl011::FR) & pl011::FR_BUSY == 0,
                UartKind::Cadence => self.regs.read32(cadence::SR) & cadence::SR_TXEMPTY != 0,
            };
            if done {
                return;
            }
        }
    }
}

impl Uart<MmioRegion> {
    /// The UART a platform names, if it names one this driver knows.
    pub fn from_platform(platform: &Platform) -> Option<Self> {
        let kind = UartKind::from_abi(platform.uart_kind.get())?;
        let base = usize::try_from(platform.uart.get()).ok()?;
        if base == 0 {
            return None;
        }
        // SAFETY: the platform description comes from the hypervisor (or the built-in bare
        // platform) and names the UART mapped into this cell for its console.
        Some(Self::new(kind, unsafe { MmioRegion::new(base) }))
    }

    /// The base address.
    pub fn base(&self) -> usize {
        self.regs.base()
    }
}

impl<M: Mmio> fmt::Write for Uart<M> {
    /// Sends `text`, `"\n"` as `"\r\n"`.
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
        Ok(())
    }
}

/// The console UART's base address, 0 while there is none.
static BASE: AtomicUsize = AtomicUsize::new(0);
/// The console UART's kind ([`UartKind::to_abi`]).
static KIND: AtomicU32 = AtomicU32::new(0);

/// Makes `uart` the console (turning its transmitter on if needed).
pub fn init(uart: Uart<MmioRegion>) {
    uart.enable_transmitter();
    // The kind first: `uart()` reads the base first and sees a kind that goes with it.
    KIND.store(uart.kind.to_abi(), Ordering::Release);
    BASE.store(uart.base(), Ordering::Release);
}

/// The console UART, if there is one.
pub fn uart() -> Option<Uart<MmioRegion>> {
    let base = BASE.load(Ordering::Acquire);
    if base == 0 {
        return None;
    }
    let kind = UartKind::from_abi(KIND.load(Ordering::Acquire))?;
    // SAFETY: `init` stored the base address of a `Uart` that was valid to drive.
    Some(Uart::new(kind, unsafe { MmioRegion::new(base) }))
}

/// Prints formatted text on the console (nothing if there is none). Used by
/// [`print!`](crate::print!) and [`println!`](crate::println!).
pub fn print(args: fmt::Arguments<'_>) {
    if let Some(mut uart) = uart() {
        // Writing to a UART cannot fail.
        let _ = fmt::Write::write_fmt(&mut uart, args);
    }
}

/// Waits until the console has sent everything.
pub fn flush() {
    if let Some(uart) = uart() {
        uart.flush();
    }
}

/// Prints to the console, like `std::print!`.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!($($arg)*))
    };
}

/// Prints a line to the console (`"\r\n"` at the end), like `std::println!`.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::{Access, FakeMmio};
    use core::fmt::Write as _;
    use std::vec::Vec;

    fn sent(fake: &FakeMmio, data: usize) -> Vec<u8> {
        fake.writes()
            .into_iter()
            .filter_map(|a| match a {
                Access::Write32(offset, value) if offset == data => Some(value as u8),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pl011_waits_for_room_and_sends_crlf() {
        let fake = FakeMmio::new();
        // The FIFO is full twice, then has room.
        fake.script(pl011::FR, &[pl011::FR_TXFF, pl011::FR_TXFF]);
        let mut uart = Uart::new(UartKind::Pl011, fake);
        uart.write_str("hi\n").unwrap();
        assert_eq!(sent(&uart.regs, pl011::DR), b"hi\r\n");
    }

    #[test]
    fn cadence_sends_through_its_fifo() {
        let fake = FakeMmio::new();
        fake.script(cadence::SR, &[cadence::SR_TXFULL]);
        let mut uart = Uart::new(UartKind::Cadence, fake);
        write!(uart, "a\nb").unwrap();
        assert_eq!(sent(&uart.regs, cadence::FIFO), b"a\r\nb");
    }

    #[test]
    fn a_stuck_uart_drops_bytes_instead_of_hanging() {
        let fake = FakeMmio::new();
        fake.set(pl011::FR, pl011::FR_TXFF | pl011::FR_BUSY);
        let uart = Uart::new(UartKind::Pl011, fake);
        uart.write_byte(b'x');
        uart.flush();
        assert!(uart.regs.writes().is_empty());
    }

    #[test]
    fn enables_a_disabled_transmitter_only() {
        let fake = FakeMmio::new();
        fake.set(pl011::CR, 0x300); // PL011 reset value: TXE and RXE, UART disabled.
        let uart = Uart::new(UartKind::Pl011, fake);
        uart.enable_transmitter();
        assert_eq!(uart.regs.get(pl011::CR), 0x301);
        assert_eq!(
            uart.regs.get(pl011::LCR_H),
            u64::from(pl011::LCR_H_WLEN8 | pl011::LCR_H_FEN)
        );
        let before = uart.regs.writes().len();
        uart.enable_transmitter();
        assert_eq!(uart.regs.writes().len(), before);

        let fake = FakeMmio::new();
        fake.set(cadence::CR, cadence::CR_TX_DIS | 0x3);
        let uart = Uart::new(UartKind::Cadence, fake);
        uart.enable_transmitter();
        assert_eq!(
            uart.regs.get(cadence::CR),
            u64::from(cadence::CR_TX_EN | 0x3)
        );
    }

    #[test]
    fn uart_kinds_round_trip() {
        for kind in [UartKind::Pl011, UartKind::Cadence] {
            assert_eq!(UartKind::from_abi(kind.to_abi()), Some(kind));
        }
        assert_eq!(UartKind::from_abi(0), None);
        assert_eq!(UartKind::Cadence.name(), "cadence");
    }
}
