//! In-memory register files for host tests (feature `fake`).
//!
//! [`FakeGic`] is a GIC register block with the architecture's write semantics where they
//! matter for partitioning: the set/clear register pairs (`IS*`/`IC*ENABLER`, `PENDR`,
//! `ACTIVER`, at block offsets `0x100..0x400` and the same offsets of every 64 KiB frame) share
//! one state word, writing 1 sets or clears, writing 0 does nothing; `GICD_CPENDSGIR` and
//! `GICD_SPENDSGIR` likewise; `GICD_SGIR` (`0xF00`) records the SGIs sent. Everything else is
//! plain storage. Every write is logged.
//!
//! [`FakeListRegisters`] holds list registers and computes `ELRSR` from their state.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use crate::lr::{ListRegisterFile, LrFormat, LrState};
use crate::regs::GicRegisters;

/// A fake GIC register block; see the [module documentation](self).
#[derive(Clone, Debug, Default)]
pub struct FakeGic {
    values: BTreeMap<usize, u32>,
    writes: Vec<(usize, u32)>,
    sgis: Vec<u32>,
}

/// Where a register's state lives, and how a write changes it.
enum Semantics {
    Plain(usize),
    Set(usize),
    Clear(usize),
    SendSgi,
}

fn semantics(offset: usize) -> Semantics {
    let local = offset & 0xffff;
    match local {
        0x100..0x400 if local & 0x80 == 0 => Semantics::Set(offset),
        0x100..0x400 => Semantics::Clear(offset & !0x80),
        0xF00 if offset < 0x1000 => Semantics::SendSgi,
        0xF10..0xF20 if offset < 0x1000 => Semantics::Clear(offset + 0x10),
        0xF20..0xF30 if offset < 0x1000 => Semantics::Set(offset),
        _ => Semantics::Plain(offset),
    }
}

impl FakeGic {
    /// Every register 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the state behind the register at `offset` (for a set/clear pair, the shared
    /// state), without logging a write.
    pub fn set(&mut self, offset: usize, value: u32) {
        let key = match semantics(offset) {
            Semantics::Plain(key) | Semantics::Set(key) | Semantics::Clear(key) => key,
            Semantics::SendSgi => return,
        };
        self.values.insert(key, value);
    }

    /// The state behind the register at `offset`, without logging.
    pub fn get(&self, offset: usize) -> u32 {
        match semantics(offset) {
            Semantics::Plain(key) | Semantics::Set(key) | Semantics::Clear(key) => {
                self.values.get(&key).copied().unwrap_or(0)
            }
            Semantics::SendSgi => 0,
        }
    }

    /// Every register state that was set or written, by offset (set/clear pairs under the
    /// set register's offset, `GICD_[C|S]PENDSGIR` under `GICD_SPENDSGIR`'s).
    pub fn snapshot(&self) -> BTreeMap<usize, u32> {
        self.values.clone()
    }

    /// Every write so far as `(offset, value)`, in order.
    pub fn writes(&self) -> &[(usize, u32)] {
        &self.writes
    }

    /// The values written to `GICD_SGIR`, in order.
    pub fn sgis_sent(&self) -> &[u32] {
        &self.sgis
    }

    /// Forgets the logged writes and SGIs.
    pub fn clear_log(&mut self) {
        self.writes.clear();
        self.sgis.clear();
    }
}

impl GicRegisters for FakeGic {
    fn read32(&mut self, offset: usize) -> u32 {
        self.get(offset)
    }

    fn write32(&mut self, offset: usize, value: u32) {
        self.writes.push((offset, value));
        match semantics(offset) {
            Semantics::Plain(key) => {
                self.values.insert(key, value);
            }
            Semantics::Set(key) => *self.values.entry(key).or_default() |= value,
            Semantics::Clear(key) => *self.values.entry(key).or_default() &= !value,
            Semantics::SendSgi => self.sgis.push(value),
        }
    }
}

/// Fake list registers: `empty()` reports every list register whose state is Invalid.
#[derive(Clone, Debug)]
pub struct FakeListRegisters {
    format: LrFormat,
    lrs: Vec<u64>,
    underflow: bool,
}

impl FakeListRegisters {
    /// `count` list registers of `format`, all empty.
    pub fn new(format: LrFormat, count: usize) -> Self {
        Self {
            format,
            lrs: vec![0; count.min(64)],
            underflow: false,
        }
    }

    /// The raw list register values.
    pub fn values(&self) -> &[u64] {
        &self.lrs
    }

    /// Whether the underflow maintenance interrupt is enabled.
    pub fn underflow_enabled(&self) -> bool {
        self.underflow
    }

    /// Sets list register `n`'s state, as the virtual CPU interface does when the cell
    /// acknowledges (Pending → Active) or deactivates (→ Invalid) the interrupt.
    pub fn set_state(&mut self, n: usize, state: LrState) {
        let mut lr = self.format.decode(self.lrs[n]);
        lr.state = state;
        // Re-encoding a decoded value of a valid list register cannot fail.
        self.lrs[n] = self.format.encode(&lr).unwrap_or(0);
    }
}

impl ListRegisterFile for FakeListRegisters {
    fn count(&self) -> usize {
        self.lrs.len()
    }

    fn read(&mut self, n: usize) -> u64 {
        self.lrs[n]
    }

    fn write(&mut self, n: usize, value: u64) {
        self.lrs[n] = value;
    }

    fn empty(&mut self) -> u64 {
        let format = self.format;
        self.lrs
            .iter()
            .enumerate()
            .filter(|(_, &lr)| format.decode(lr).state == LrState::Invalid)
            .fold(0, |mask, (n, _)| mask | 1 << n)
    }

    fn set_underflow_interrupt(&mut self, enabled: bool) {
        self.underflow = enabled;
    }
}
