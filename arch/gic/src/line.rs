//! An interrupt line's state when it changes owner: what a cell left behind must not reach
//! the next owner.
//!
//! A cell can leave an SPI enabled, pending or active, with any priority it may set, routed
//! to its CPUs, and a CPU's private interrupts (SGIs and PPIs) likewise. When the line or the
//! CPU moves to another cell, the hypervisor:
//!
//! - quiesces it ([`quiesce_spi`], [`reset_private`]): disabled, not pending, not active,
//!   Group 1 on GICv3 with `IGRPMODR` 0 (the group, which no cell can change: the emulation
//!   ignores their writes), priority [`DEFAULT_PRIORITY`] for private lines;
//! - gives the root cell back what it had ([`SpiState::capture`] when the line leaves the root
//!   cell, [`SpiState::restore`] when it returns): priority, trigger configuration, targets
//!   (GICv2) or route (GICv3) and the enable bit. Pending and active state are not restored:
//!   an interrupt the device raised meanwhile was the other cell's.
//!
//! The per-interrupt banks sit at the same offsets on the GICv2 distributor, the GICv3
//! distributor (SPIs) and the GICv3 redistributors' SGI_base frame (private lines), so the
//! functions take the offset of the block that holds them.

use crate::ownership::IntId;
use crate::regs::GicRegisters;
use crate::v2;
use crate::v3;
use crate::HIGHEST_CELL_PRIORITY;

/// The priority of a private line after [`reset_private`]: Linux's default (`GICD_INT_DEF_PRI`
/// is `0xa0`), below every pseudo-NMI priority.
pub const DEFAULT_PRIORITY: u8 = 0xa0;

/// The bit of `irq` in a 1-bit-per-INTID bank at `base`: (register offset, mask).
fn bit(base: usize, irq: u32) -> (usize, u32) {
    (base + (irq as usize / 32) * 4, 1 << (irq % 32))
}

/// Reads the `bits`-bit field of `irq` in the bank at `base`.
fn field<R: GicRegisters + ?Sized>(regs: &mut R, base: usize, irq: u32, bits: u32) -> u32 {
    let per_word = 32 / bits;
    let offset = base + (irq / per_word) as usize * 4;
    regs.read32(offset) >> ((irq % per_word) * bits) & ((1 << bits) - 1)
}

/// Writes the `bits`-bit field of `irq` in the bank at `base` (read-merge-write).
fn set_field<R: GicRegisters + ?Sized>(regs: &mut R, base: usize, irq: u32, bits: u32, value: u32) {
    let per_word = 32 / bits;
    let offset = base + (irq / per_word) as usize * 4;
    let shift = (irq % per_word) * bits;
    let mask = ((1 << bits) - 1) << shift;
    let current = regs.read32(offset);
    let new = current & !mask | (value << shift) & mask;
    if new != current {
        regs.write32(offset, new);
    }
}

/// Disables the SPI `irq` and clears its pending and active state; on GICv3 (`v3`) it is put
/// back into Group 1 with `IGRPMODR` 0. `regs` is the distributor. Call with the lock that
/// serialises distributor accesses held.
pub fn quiesce_spi<R: GicRegisters + ?Sized>(regs: &mut R, irq: IntId, v3: bool) {
    let n = irq.get();
    for base in [v2::GICD_ICENABLER, v2::GICD_ICPENDR, v2::GICD_ICACTIVER] {
        let (offset, mask) = bit(base, n);
        regs.write32(offset, mask);
    }
    if v3 {
        set_field(regs, v3::GICD_IGROUPR, n, 1, 1);
        set_field(regs, v3::GICD_IGRPMODR, n, 1, 0);
    }
}

/// What the root cell had set for one of its SPIs: captured when the line leaves the root
/// cell, restored when it comes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpiState {
    /// Enabled.
    pub enabled: bool,
    /// `IPRIORITYR` field.
    pub priority: u8,
    /// `ICFGR` field (bit 1: edge-triggered).
    pub config: u8,
    /// `ITARGETSR` byte (GICv2) or `IROUTER` (GICv3).
    pub route: u64,
}

impl SpiState {
    /// The state of SPI `irq` in the distributor `regs`.
    pub fn capture<R: GicRegisters + ?Sized>(regs: &mut R, irq: IntId, v3: bool) -> Self {
        let n = irq.get();
        let (offset, mask) = bit(v2::GICD_ISENABLER, n);
        Self {
            enabled: regs.read32(offset) & mask != 0,
            priority: field(regs, v2::GICD_IPRIORITYR, n, 8) as u8,
            config: field(regs, v2::GICD_ICFGR, n, 2) as u8,
            route: if v3 {
                regs.read64(v3::GICD_IROUTER + 8 * n as usize)
            } else {
                u64::from(field(regs, v2::GICD_ITARGETSR, n, 8))
            },
        }
    }

    /// Quiesces SPI `irq` ([`quiesce_spi`]), then sets this state, enabling it last. The
    /// priority is never set above [`HIGHEST_CELL_PRIORITY`].
    pub fn restore<R: GicRegisters + ?Sized>(&self, regs: &mut R, irq: IntId, v3: bool) {
        let n = irq.get();
        quiesce_spi(regs, irq, v3);
        let priority = self.priority.max(HIGHEST_CELL_PRIORITY);
        set_field(regs, v2::GICD_IPRIORITYR, n, 8, u32::from(priority));
        set_field(regs, v2::GICD_ICFGR, n, 2, u32::from(self.config));
        if v3 {
            regs.write64(v3::GICD_IROUTER + 8 * n as usize, self.route);
        } else {
            set_field(regs, v2::GICD_ITARGETSR, n, 8, self.route as u32);
        }
        if self.enabled {
            let (offset, mask) = bit(v2::GICD_ISENABLER, n);
            regs.write32(offset, mask);
        }
    }
}

/// Resets a CPU's private lines (SGIs and PPIs) but those in `reserved` (a mask of INTIDs
/// 0..32: the hypervisor's own): disabled, not pending, not active, priority
/// [`DEFAULT_PRIORITY`], and on GICv3 Group 1 with `IGRPMODR` 0. Trigger configurations are
/// left alone (a PPI's is fixed by its device on most implementations).
///
/// `regs` holds the banks at `base`: the distributor at 0 on GICv2 (banked: run it on the CPU
/// whose lines these are), the CPU's SGI_base frame on GICv3.
pub fn reset_private<R: GicRegisters + ?Sized>(regs: &mut R, base: usize, reserved: u32, v3: bool) {
    let lines = !reserved;
    regs.write32(base + v2::GICD_ICENABLER, lines);
    regs.write32(base + v2::GICD_ICACTIVER, lines);
    regs.write32(base + v2::GICD_ICPENDR, lines);
    if v3 {
        let group = regs.read32(base + v3::GICD_IGROUPR);
        if group | lines != group {
            regs.write32(base + v3::GICD_IGROUPR, group | lines);
        }
        let modifier = regs.read32(base + v3::GICD_IGRPMODR);
        if modifier & !lines != modifier {
            regs.write32(base + v3::GICD_IGRPMODR, modifier & !lines);
        }
    } else {
        // GICv2 SGIs: pending state per source CPU, cleared through GICD_CPENDSGIR<n>, one byte
        // per SGI (IHI 0048B §4.3.13; GICD_ICPENDR0 does not clear SGIs).
        for word in 0..4 {
            let sgis = (lines >> (word * 4)) & 0xf;
            let bytes = (0..4)
                .filter(|i| sgis & 1 << i != 0)
                .fold(0u32, |acc, i| acc | 0xff << (i * 8));
            if bytes != 0 {
                regs.write32(base + v2::GICD_CPENDSGIR + 4 * word as usize, bytes);
            }
        }
    }
    for irq in (0..32).filter(|irq| lines & 1 << irq != 0) {
        set_field(
            regs,
            base + v2::GICD_IPRIORITYR,
            irq,
            8,
            u32::from(DEFAULT_PRIORITY),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeGic;

    const SPI: IntId = IntId::new(40);

    #[test]
    fn a_quiesced_spi_is_off_idle_and_in_group_1() {
        let mut gicd = FakeGic::new();
        gicd.set(v2::GICD_ISENABLER + 4, 1 << 8 | 1 << 9);
        gicd.set(v2::GICD_ISPENDR + 4, 1 << 8);
        gicd.set(v2::GICD_ISACTIVER + 4, 1 << 8 | 1);
        gicd.set(v3::GICD_IGRPMODR + 4, 1 << 8);
        quiesce_spi(&mut gicd, SPI, true);
        assert_eq!(
            gicd.get(v2::GICD_ISENABLER + 4),
            1 << 9,
            "INTID 41 untouched"
        );
        assert_eq!(gicd.get(v2::GICD_ISPENDR + 4), 0);
        assert_eq!(gicd.get(v2::GICD_ISACTIVER + 4), 1, "INTID 32 untouched");
        assert_eq!(gicd.get(v3::GICD_IGROUPR + 4), 1 << 8);
        assert_eq!(gicd.get(v3::GICD_IGRPMODR + 4), 0);
    }

    #[test]
    fn the_root_gets_its_line_back_as_it_left_it() {
        for v3 in [false, true] {
            let mut gicd = FakeGic::new();
            // Root: enabled, priority 0xa0, edge, targeted at CPU 1 (GICv2) / routed to 0.0.0.1.
            gicd.set(v2::GICD_ISENABLER + 4, 1 << 8);
            gicd.set(v2::GICD_IPRIORITYR + 40, 0x55a0);
            gicd.set(v2::GICD_ICFGR + 8, 0b10 << 16);
            gicd.set(v2::GICD_ITARGETSR + 40, 0x0202);
            gicd.set(v3::GICD_IROUTER + 8 * 40, 1);
            let saved = SpiState::capture(&mut gicd, SPI, v3);
            assert_eq!(
                saved,
                SpiState {
                    enabled: true,
                    priority: 0xa0,
                    config: 0b10,
                    route: if v3 { 1 } else { 2 },
                }
            );
            // The cell: level, priority 0x10, routed elsewhere, pending and active.
            gicd.set(v2::GICD_IPRIORITYR + 40, 0x5510);
            gicd.set(v2::GICD_ICFGR + 8, 0);
            gicd.set(v2::GICD_ITARGETSR + 40, 0x0208);
            gicd.set(v3::GICD_IROUTER + 8 * 40, 3);
            gicd.set(v2::GICD_ISPENDR + 4, 1 << 8);
            gicd.set(v2::GICD_ISACTIVER + 4, 1 << 8);
            saved.restore(&mut gicd, SPI, v3);
            assert_eq!(
                gicd.get(v2::GICD_IPRIORITYR + 40),
                0x55a0,
                "INTID 41 untouched"
            );
            assert_eq!(gicd.get(v2::GICD_ICFGR + 8), 0b10 << 16);
            if v3 {
                assert_eq!(gicd.get(v3::GICD_IROUTER + 8 * 40), 1);
            } else {
                assert_eq!(gicd.get(v2::GICD_ITARGETSR + 40), 0x0202);
            }
            assert_eq!(gicd.get(v2::GICD_ISPENDR + 4), 0);
            assert_eq!(gicd.get(v2::GICD_ISACTIVER + 4), 0);
            assert_eq!(gicd.get(v2::GICD_ISENABLER + 4), 1 << 8);
            // The enable comes last, after the line is configured.
            let last = gicd.writes().last().copied();
            assert_eq!(last, Some((v2::GICD_ISENABLER + 4, 1 << 8)));
        }
    }

    #[test]
    fn a_restored_priority_stays_below_the_hypervisors() {
        let mut gicd = FakeGic::new();
        let state = SpiState {
            priority: 0,
            ..SpiState::default()
        };
        state.restore(&mut gicd, SPI, true);
        assert_eq!(
            gicd.get(v2::GICD_IPRIORITYR + 40),
            u32::from(HIGHEST_CELL_PRIORITY)
        );
        assert_eq!(gicd.get(v2::GICD_ISENABLER + 4), 0, "was disabled");
    }

    #[test]
    fn private_lines_are_reset_but_the_hypervisors() {
        let reserved = 1 << 15 | 1 << 25 | 1 << 26;
        for v3 in [false, true] {
            let base = if v3 { v3::gicr::SGI_BASE } else { 0 };
            let mut regs = FakeGic::new();
            regs.set(base + v2::GICD_ISENABLER, u32::MAX);
            regs.set(base + v2::GICD_ISPENDR, u32::MAX);
            regs.set(base + v2::GICD_ISACTIVER, u32::MAX);
            regs.set(base + v3::GICD_IGROUPR, reserved | 1 << 27);
            regs.set(base + v3::GICD_IGRPMODR, 1 << 27 | 1 << 25);
            for word in 0..8 {
                regs.set(base + v2::GICD_IPRIORITYR + 4 * word, 0x1010_1010);
            }
            for word in 0..4 {
                regs.set(v2::GICD_SPENDSGIR + 4 * word, u32::MAX);
            }
            reset_private(&mut regs, base, reserved, v3);
            assert_eq!(regs.get(base + v2::GICD_ISENABLER), reserved);
            assert_eq!(regs.get(base + v2::GICD_ISPENDR), reserved);
            assert_eq!(regs.get(base + v2::GICD_ISACTIVER), reserved);
            // PPI 27 (word 6, byte 3) at the default, the hypervisor's PPI 26 and 25 kept.
            assert_eq!(regs.get(base + v2::GICD_IPRIORITYR + 24), 0xa010_10a0);
            // SGI 15 (word 3, byte 3) kept.
            assert_eq!(regs.get(base + v2::GICD_IPRIORITYR + 12), 0x10a0_a0a0);
            if v3 {
                assert_eq!(regs.get(base + v3::GICD_IGROUPR), u32::MAX);
                assert_eq!(regs.get(base + v3::GICD_IGRPMODR), 1 << 25);
            } else {
                // SGIs 0..15 pending from every source cleared, SGI 15's kept.
                assert_eq!(regs.get(v2::GICD_SPENDSGIR), 0);
                assert_eq!(regs.get(v2::GICD_SPENDSGIR + 12), 0xff00_0000);
            }
        }
    }
}
