//! How much console output a cell can cause: the notes the hypervisor prints about what a cell
//! did while the cell goes on (an abort injected into the root cell, an undefined instruction
//! injected, a refused SGI). A cell controls how often those happen, so without a limit it
//! could flood the UART it shares with the root cell and push the hypervisor's own reports
//! out of the console ring that `cellvisor console` reads.
//!
//! Each cell has an [`OutputBudget`]:
//! - a token bucket of lines: [`BURST`] at once, then one line per [`REFILL_MS`]; lines over
//!   it are suppressed and counted, and the next line that passes says how many were;
//! - a share of the ring: in each stretch of [`RING_WINDOW`] bytes of ring output, at most
//!   [`RING_SHARE`] bytes of the cell's notes go into the ring. So the last `RING_WINDOW`
//!   bytes of the ring hold at most `2 * RING_SHARE` bytes of any one cell's notes (a share at
//!   the end of one window and one at the start of the next), however long the cell tries.
//!   Notes over the share still reach the UART, within the bucket.
//!
//! Reports that stop a cell are not notes: each needs the root cell to create and start the
//! cell again, so they are bounded by the root cell's management and always printed.

/// Lines a cell's notes can have at once.
pub const BURST: u32 = 16;
/// Milliseconds per line refilled.
pub const REFILL_MS: u64 = 2000;
/// The ring output over which a cell's share is counted, in bytes: the size of the console
/// ring.
pub const RING_WINDOW: u64 = 64 << 10;
/// A cell's share of each window, in bytes. With at most 8 cells (the root cell included),
/// their notes hold at most `8 * 2 * RING_SHARE` = half of the ring; the hypervisor's own
/// output always has the other half.
pub const RING_SHARE: u64 = 2 << 10;

/// What to do with one note.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decision {
    /// Print it; `ring`: into the console ring too; `suppressed`: notes dropped since the
    /// last one printed (to say so first).
    Print {
        /// Also into the ring.
        ring: bool,
        /// Notes dropped before this one.
        suppressed: u32,
    },
    /// Drop it (counted).
    Suppress,
}

/// One cell's output budget; see the [module documentation](self).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OutputBudget {
    /// Lines taken from the bucket (`BURST - spent` are left): all zero is a full budget,
    /// so that budgets can live in `.bss`.
    spent: u32,
    /// Time of the last refill, milliseconds.
    refilled: u64,
    suppressed: u32,
    /// Ring position where the current window started.
    window: u64,
    /// The cell's bytes in the ring in the current window.
    used: u64,
}

impl OutputBudget {
    /// A full budget.
    pub const fn new() -> Self {
        Self {
            spent: 0,
            refilled: 0,
            suppressed: 0,
            window: 0,
            used: 0,
        }
    }

    /// Decides on a note of `len` bytes at time `now_ms` when the ring's total output so far
    /// is `ring_head` bytes, and charges the budget for it.
    pub fn admit(&mut self, now_ms: u64, ring_head: u64, len: usize) -> Decision {
        let refill = now_ms.saturating_sub(self.refilled) / REFILL_MS;
        if refill > 0 {
            self.spent = u64::from(self.spent).saturating_sub(refill) as u32;
            self.refilled += refill * REFILL_MS;
        }
        if self.spent >= BURST {
            self.suppressed = self.suppressed.saturating_add(1);
            return Decision::Suppress;
        }
        self.spent += 1;
        if ring_head.saturating_sub(self.window) >= RING_WINDOW {
            self.window = ring_head;
            self.used = 0;
        }
        let ring = self.used + len as u64 <= RING_SHARE;
        if ring {
            self.used += len as u64;
        }
        Decision::Print {
            ring,
            suppressed: core::mem::take(&mut self.suppressed),
        }
    }
}

impl Default for OutputBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn a_burst_then_one_line_per_refill_with_the_count_of_those_dropped() {
        let mut budget = OutputBudget::new();
        let mut head = 0;
        for _ in 0..BURST {
            assert!(matches!(budget.admit(0, head, 10), Decision::Print { .. }));
            head += 10;
        }
        for _ in 0..1000 {
            assert_eq!(budget.admit(REFILL_MS - 1, head, 10), Decision::Suppress);
        }
        assert_eq!(
            budget.admit(REFILL_MS, head, 10),
            Decision::Print {
                ring: true,
                suppressed: 1000
            }
        );
        assert_eq!(budget.admit(REFILL_MS + 1, head, 10), Decision::Suppress);
        // A long silence refills at most a burst.
        let later = 100 * REFILL_MS * u64::from(BURST);
        for _ in 0..BURST {
            assert!(matches!(
                budget.admit(later, head, 10),
                Decision::Print { .. }
            ));
        }
        assert_eq!(budget.admit(later, head, 10), Decision::Suppress);
    }

    #[test]
    fn a_cell_never_holds_more_than_its_share_of_the_ring() {
        // A cell printing 200-byte notes as fast as its bucket allows, for a long time, with
        // the hypervisor's own output of 1 KiB per second around it: of every RING_WINDOW
        // bytes that went into the ring, at most 2 * RING_SHARE are the cell's.
        let mut budget = OutputBudget::new();
        let mut ring: Vec<bool> = Vec::new(); // true: a byte of the cell's
        let mut ms = 0;
        while ms < 3_600_000 {
            if let Decision::Print { ring: true, .. } = budget.admit(ms, ring.len() as u64, 200) {
                ring.extend([true; 200]);
            }
            if ms % 1000 == 0 {
                ring.extend([false; 1024]);
            }
            ms += 50;
        }
        let window = RING_WINDOW as usize;
        let worst = ring
            .windows(window)
            .step_by(512)
            .map(|w| w.iter().filter(|&&mine| mine).count())
            .max()
            .unwrap_or(0);
        assert!(worst > 0);
        assert!(worst <= 2 * RING_SHARE as usize, "{worst} bytes");
    }

    #[test]
    fn notes_over_the_share_still_reach_the_uart() {
        let mut budget = OutputBudget::new();
        let lines = RING_SHARE / 200;
        assert!(lines < u64::from(BURST));
        for _ in 0..lines {
            assert!(matches!(
                budget.admit(0, 0, 200),
                Decision::Print { ring: true, .. }
            ));
        }
        assert_eq!(
            budget.admit(0, 0, 200),
            Decision::Print {
                ring: false,
                suppressed: 0
            }
        );
        // A new window of ring output, a new share.
        assert!(matches!(
            budget.admit(0, RING_WINDOW, 200),
            Decision::Print { ring: true, .. }
        ));
    }
}
