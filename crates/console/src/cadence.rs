//! Cadence UART as found in the Xilinx Zynq UltraScale+ MPSoC processing system (PS UART0/1),
//! transmit side, polled.
//!
//! Register names, offsets and bits from the *Zynq UltraScale+ Device Technical Reference
//! Manual* (UG1085), chapter "UART Controller", with the field tables of its register reference
//! (UG1087, module `UART`). The zcu102 console is UART0 at physical address `0xFF00_0000`.
//!
//! # QEMU
//!
//! QEMU models this UART as `cadence_uart` (`hw/char/cadence_uart.c`, as of recent QEMU
//! master). What matters to a console:
//!
//! - The reset value of Control_reg0 is `0x128`: TXDIS, RXDIS and STPBRK set. A byte written to
//!   TX_RX_FIFO0 while TXDIS is 1 or TXEN is 0 is **silently dropped**, so
//!   [`CadenceUart::init`] is required when nothing ran before the hypervisor (QEMU `-kernel`).
//! - The model has a reference-clock input. While that clock is disabled (or the device is in
//!   reset), *every* register access, read or write, is refused with a bus error
//!   (`MEMTX_ERROR`, "uart is unclocked or in reset" under `-d guest_errors`), which an Arm CPU
//!   takes as a synchronous external abort: output is not dropped, the access faults. On the
//!   `xlnx-zcu102` machine the UARTs' clock input is left unconnected and the model then runs
//!   from a built-in 50 MHz default, so accesses always work there; on machines that wire it
//!   to a clock controller model (the Zynq-7000 `xilinx-zynq-a9` wires it to the SLCR's
//!   `uartN_ref_clk`), firmware must enable the clock first, exactly as on hardware.
//! - The 16-byte transmit FIFO drains into the character back-end at once; TXFULL is only seen
//!   when the back-end pushes back. A write to a full FIFO is dropped (and flags TOVR), which is
//!   why [`Uart::write_byte`] polls TXFULL. TACTIVE is never set.
//! - The baud rate registers only change what QEMU reports to the back-end; output does not
//!   depend on them, so leaving them as firmware (or reset) set them is correct.

use core::hint::spin_loop;

use bitflags::bitflags;

use crate::mmio::{Mmio, MmioAddr, MmioRegion};
use crate::uart::Uart;

/// Size of the register frame the driver needs (the registers end at 0x48; one 4 KiB page).
pub const FRAME_SIZE: usize = 0x1000;

/// Control_reg0, UART Control Register.
const CONTROL: usize = 0x00;
/// mode_reg0, UART Mode Register.
const MODE: usize = 0x04;
/// Channel_sts_reg0, Channel Status Register, read-only.
const CHANNEL_STATUS: usize = 0x2C;
/// TX_RX_FIFO0, transmit and receive FIFO: a write pushes bits \[7:0\] into the transmit FIFO.
const TX_RX_FIFO: usize = 0x30;

bitflags! {
    /// Control_reg0 bits.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Control: u32 {
        /// RXRES, bit 0: receive path reset, self-clearing.
        const RXRES = 1 << 0;
        /// TXRES, bit 1: transmit path reset, self-clearing.
        const TXRES = 1 << 1;
        /// RXEN, bit 2: receive enable.
        const RXEN = 1 << 2;
        /// RXDIS, bit 3: receive disable (wins over RXEN).
        const RXDIS = 1 << 3;
        /// TXEN, bit 4: transmit enable; the transmitter runs when TXEN is 1 and TXDIS is 0.
        const TXEN = 1 << 4;
        /// TXDIS, bit 5: transmit disable (wins over TXEN).
        const TXDIS = 1 << 5;
        const _ = !0;
    }
}

bitflags! {
    /// Channel_sts_reg0 bits the transmitter uses.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Status: u32 {
        /// TEMPTY, bit 3: transmit FIFO empty.
        const TEMPTY = 1 << 3;
        /// TXFULL, bit 4: transmit FIFO full.
        const TXFULL = 1 << 4;
        /// TACTIVE, bit 11: transmitter state machine active (a character is being shifted
        /// out).
        const TACTIVE = 1 << 11;
        const _ = !0;
    }
}

/// mode_reg0 CHMODE, bits [9:8]: channel mode. 0b00 is normal; automatic echo and the two
/// loopback modes keep the transmitter's output off the line.
const MODE_CHMODE: u32 = 0b11 << 8;

/// A Cadence (Zynq UltraScale+ PS) UART, transmitting by polling.
///
/// The baud rate generator (Baud_rate_gen_reg0, Baud_rate_divider_reg0) and the character
/// format in mode_reg0 are left as firmware or QEMU set them; [`CadenceUart::init`] only turns
/// the transmitter on.
#[derive(Debug)]
pub struct CadenceUart<M: Mmio> {
    registers: M,
}

impl<M: Mmio> CadenceUart<M> {
    /// A driver for the UART whose registers `registers` reaches.
    pub const fn new(registers: M) -> Self {
        Self { registers }
    }

    /// Gives the register access back.
    pub fn into_inner(self) -> M {
        self.registers
    }

    /// Enables the transmitter (TXEN = 1, TXDIS = 0) and selects the normal channel mode,
    /// without touching the baud rate generator, the character format or the receiver.
    ///
    /// Needed on QEMU when the hypervisor is the first code to run: the model resets with
    /// TXDIS set and drops everything written until TXEN is set (see the
    /// [module documentation](self)). A no-op on a UART firmware already set up.
    pub fn init(&mut self) {
        let mode = self.registers.read32(MODE);
        if mode & MODE_CHMODE != 0 {
            self.registers.write32(MODE, mode & !MODE_CHMODE);
        }
        let control = Control::from_bits_retain(self.registers.read32(CONTROL));
        // TXRES and RXRES read as 0 once done; never write them back as 1, that would discard
        // the FIFOs' contents.
        let wanted = (control - Control::TXDIS - Control::TXRES - Control::RXRES) | Control::TXEN;
        if wanted != control {
            self.registers.write32(CONTROL, wanted.bits());
        }
    }

    fn status(&mut self) -> Status {
        Status::from_bits_retain(self.registers.read32(CHANNEL_STATUS))
    }
}

impl CadenceUart<MmioRegion> {
    /// A driver for the UART whose register frame is mapped at `base`.
    ///
    /// # Safety
    ///
    /// As for [`MmioRegion::new`] with `size` [`FRAME_SIZE`]: `base` maps this UART's
    /// registers as device memory for the rest of the program, and nothing else drives it.
    pub unsafe fn at(base: MmioAddr) -> Self {
        // SAFETY: The caller's guarantees are those MmioRegion::new needs.
        Self::new(unsafe { MmioRegion::new(base, FRAME_SIZE) })
    }
}

impl<M: Mmio> Uart for CadenceUart<M> {
    fn write_byte(&mut self, byte: u8) {
        while self.status().contains(Status::TXFULL) {
            spin_loop();
        }
        self.registers.write32(TX_RX_FIFO, u32::from(byte));
    }

    fn flush(&mut self) {
        loop {
            let status = self.status();
            if status.contains(Status::TEMPTY) && !status.contains(Status::TACTIVE) {
                return;
            }
            spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Access, FakeMmio};

    const TEMPTY: u32 = 1 << 3;
    const TXFULL: u32 = 1 << 4;
    const TACTIVE: u32 = 1 << 11;
    /// Control_reg0 after reset (UG1087): STPBRK | TXDIS | RXDIS.
    const CONTROL_RESET: u32 = 0x128;

    fn uart() -> (CadenceUart<FakeMmio>, FakeMmio) {
        let registers = FakeMmio::new();
        (CadenceUart::new(registers.clone()), registers)
    }

    #[test]
    fn bytes_reach_the_fifo_in_order() {
        let (mut uart, registers) = uart();
        uart.write_bytes(b"zcu");
        assert_eq!(
            registers.writes(),
            [(TX_RX_FIFO, 0x7a), (TX_RX_FIFO, 0x63), (TX_RX_FIFO, 0x75)]
        );
    }

    #[test]
    fn waits_while_the_transmit_fifo_is_full() {
        let (mut uart, registers) = uart();
        registers.script_reads(CHANNEL_STATUS, [TXFULL, TXFULL | TACTIVE, TACTIVE]);
        uart.write_byte(b'!');
        assert_eq!(
            registers.accesses(),
            [
                Access::Read {
                    offset: CHANNEL_STATUS,
                    value: TXFULL
                },
                Access::Read {
                    offset: CHANNEL_STATUS,
                    value: TXFULL | TACTIVE
                },
                Access::Read {
                    offset: CHANNEL_STATUS,
                    value: TACTIVE
                },
                Access::Write {
                    offset: TX_RX_FIFO,
                    value: u32::from(b'!')
                },
            ]
        );
    }

    #[test]
    fn flush_waits_for_empty_fifo_and_idle_transmitter() {
        let (mut uart, registers) = uart();
        registers.script_reads(CHANNEL_STATUS, [0, TEMPTY | TACTIVE, TEMPTY]);
        uart.flush();
        assert_eq!(registers.reads_of(CHANNEL_STATUS), 3);
    }

    #[test]
    fn init_after_reset_enables_only_the_transmitter() {
        let (mut uart, registers) = uart();
        registers.set(CONTROL, CONTROL_RESET);
        uart.init();
        // TXDIS cleared, TXEN set; STPBRK and RXDIS untouched; mode already normal.
        assert_eq!(registers.writes(), [(CONTROL, 0x118)]);
        assert_eq!(registers.get(CONTROL), (1 << 8) | (1 << 4) | (1 << 3));
    }

    #[test]
    fn init_leaves_an_enabled_uart_alone() {
        let (mut uart, registers) = uart();
        // Firmware state: TX and RX enabled, 8N1 in mode_reg0 (NBSTOP etc. arbitrary here).
        registers.set(CONTROL, 0x114);
        registers.set(MODE, 0x20);
        uart.init();
        assert!(registers.writes().is_empty());
    }

    #[test]
    fn init_selects_normal_mode_keeping_the_format() {
        let (mut uart, registers) = uart();
        registers.set(CONTROL, 0x114);
        registers.set(MODE, (0b10 << 8) | 0x21);
        uart.init();
        assert_eq!(registers.writes(), [(MODE, 0x21)]);
    }

    #[test]
    fn init_never_writes_the_reset_bits() {
        let (mut uart, registers) = uart();
        registers.set(CONTROL, 0x2b); // TXDIS, RXDIS, TXRES, RXRES as a bad read would show
        uart.init();
        assert_eq!(registers.writes(), [(CONTROL, 0x18)]);
    }
}
