//! A scriptable in-memory register file for host tests (feature `fake`).
//!
//! [`FakeMmio`] behaves like a plain register file: a write stores the value, a read returns
//! the last value stored (0 if none). On top of that a test can queue the values the next reads
//! of one register return (e.g. "transmit FIFO full" three times, then "not full"), and can
//! inspect every access in order afterwards.
//!
//! Clones share one register file, so a test keeps a clone to inspect what a driver that owns
//! the other did.
//!
//! ```
//! use cellvisor_console::fake::{Access, FakeMmio};
//! use cellvisor_console::{Pl011, Uart};
//!
//! let registers = FakeMmio::new();
//! registers.script_reads(0x018, [1 << 5, 0]); // UARTFR.TXFF once, then room
//! let mut uart = Pl011::new(registers.clone());
//! uart.write_byte(b'A');
//! assert_eq!(registers.writes_to(0x000), [u32::from(b'A')]);
//! assert_eq!(registers.reads_of(0x018), 2);
//! ```

use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;

use spin::mutex::SpinMutex;

use crate::mmio::Mmio;

/// One register access, as recorded by [`FakeMmio`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A read of the register at `offset` that returned `value`.
    Read {
        /// Byte offset of the register.
        offset: usize,
        /// The value the read returned.
        value: u32,
    },
    /// A write of `value` to the register at `offset`.
    Write {
        /// Byte offset of the register.
        offset: usize,
        /// The value written.
        value: u32,
    },
}

#[derive(Debug, Default)]
struct State {
    values: BTreeMap<usize, u32>,
    scripted: BTreeMap<usize, VecDeque<u32>>,
    accesses: Vec<Access>,
}

/// A fake register file implementing [`Mmio`]; see the [module documentation](self).
#[derive(Clone, Debug, Default)]
pub struct FakeMmio {
    state: Arc<SpinMutex<State>>,
}

impl FakeMmio {
    /// An empty register file: every register reads 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the value the register at `offset` holds, without recording an access.
    pub fn set(&self, offset: usize, value: u32) {
        self.state.lock().values.insert(offset, value);
    }

    /// The value the register at `offset` holds, without recording an access.
    pub fn get(&self, offset: usize) -> u32 {
        self.state.lock().values.get(&offset).copied().unwrap_or(0)
    }

    /// Queues values for the next reads of the register at `offset`, returned in order before
    /// the register's stored value is returned again.
    pub fn script_reads(&self, offset: usize, values: impl IntoIterator<Item = u32>) {
        self.state
            .lock()
            .scripted
            .entry(offset)
            .or_default()
            .extend(values);
    }

    /// Every access so far, in order.
    pub fn accesses(&self) -> Vec<Access> {
        self.state.lock().accesses.clone()
    }

    /// Every write so far as `(offset, value)`, in order.
    pub fn writes(&self) -> Vec<(usize, u32)> {
        self.state
            .lock()
            .accesses
            .iter()
            .filter_map(|access| match *access {
                Access::Write { offset, value } => Some((offset, value)),
                Access::Read { .. } => None,
            })
            .collect()
    }

    /// The values written to the register at `offset`, in order.
    pub fn writes_to(&self, offset: usize) -> Vec<u32> {
        self.writes()
            .into_iter()
            .filter(|&(written, _)| written == offset)
            .map(|(_, value)| value)
            .collect()
    }

    /// How often the register at `offset` has been read.
    pub fn reads_of(&self, offset: usize) -> usize {
        self.state
            .lock()
            .accesses
            .iter()
            .filter(|access| matches!(access, Access::Read { offset: read, .. } if *read == offset))
            .count()
    }

    /// Forgets the recorded accesses (register values and scripts stay).
    pub fn clear_accesses(&self) {
        self.state.lock().accesses.clear();
    }
}

impl Mmio for FakeMmio {
    fn read32(&mut self, offset: usize) -> u32 {
        let mut state = self.state.lock();
        let scripted = state
            .scripted
            .get_mut(&offset)
            .and_then(VecDeque::pop_front);
        let value = scripted.unwrap_or_else(|| state.values.get(&offset).copied().unwrap_or(0));
        state.accesses.push(Access::Read { offset, value });
        value
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let mut state = self.state.lock();
        state.values.insert(offset, value);
        state.accesses.push(Access::Write { offset, value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_reads_come_first_then_the_stored_value() {
        let mut fake = FakeMmio::new();
        fake.set(0x10, 7);
        fake.script_reads(0x10, [1, 2]);
        assert_eq!(
            [fake.read32(0x10), fake.read32(0x10), fake.read32(0x10)],
            [1, 2, 7]
        );
        assert_eq!(fake.reads_of(0x10), 3);
    }

    #[test]
    fn writes_are_recorded_and_stored() {
        let mut fake = FakeMmio::new();
        let observer = fake.clone();
        fake.write32(0x4, 0xaa);
        fake.write32(0x8, 0xbb);
        fake.write32(0x4, 0xcc);
        assert_eq!(observer.writes(), [(0x4, 0xaa), (0x8, 0xbb), (0x4, 0xcc)]);
        assert_eq!(observer.writes_to(0x4), [0xaa, 0xcc]);
        assert_eq!(observer.get(0x4), 0xcc);
        assert_eq!(fake.read32(0x8), 0xbb);
        observer.clear_accesses();
        assert!(observer.accesses().is_empty());
    }
}
