//! A minimal driver for the GIC as one CPU of a cell sees it: GICv2 (distributor and CPU
//! interface, memory mapped) or GICv3 (distributor, this CPU's redistributor, CPU interface
//! through the ICC system registers).
//!
//! It enables single interrupts by INTID, acknowledges them and ends them, nothing more. In a
//! cell the distributor (and a GICv3 redistributor) is emulated by the hypervisor, which lets
//! a cell touch only its own interrupts; so the driver writes only the registers of the
//! interrupts it enables, and the global controls (GICD_CTLR, GICR_WAKER) only when they are
//! not already as needed.
//!
//! References: Arm GIC Architecture Specification v2 (IHI 0048B) chapter 4, and v3/v4
//! (IHI 0069) chapters 12 (registers) and 2.2 (INTID ranges).

use cellvisor_abi::comm::{Platform, GIC_V2, GIC_V3};

use crate::mmio::{Mmio, MmioRegion};
use crate::sysreg;

/// First shared peripheral interrupt (SPI) INTID; below are the SGIs (0-15) and PPIs (16-31).
pub const FIRST_SPI: u32 = 32;
/// INTIDs from here on are special (1020-1023: spurious and friends), never real interrupts.
pub const FIRST_SPECIAL: u32 = 1020;
/// The priority the demos use: in the middle of the range, below both priority masks.
pub const DEFAULT_PRIORITY: u8 = 0x80;

/// Distributor registers (GICv2 4.3, GICv3 12.9), common to both versions.
mod gicd {
    /// GICD_CTLR.
    pub const CTLR: usize = 0x0000;
    /// GICD_CTLR (GICv2, and GICv3 with one security state): EnableGrp0 (GICv2 Non-secure
    /// view: EnableGrp1).
    pub const CTLR_ENABLE_GRP0: u32 = 1 << 0;
    /// GICD_CTLR (GICv3): EnableGrp1 (one security state), EnableGrp1A (Non-secure view).
    pub const CTLR_ENABLE_GRP1: u32 = 1 << 1;
    /// GICD_CTLR (GICv3): affinity routing enable (ARE, ARE_NS in the Non-secure view).
    pub const CTLR_ARE: u32 = 1 << 4;
    /// GICD_CTLR (GICv3): register write pending.
    pub const CTLR_RWP: u32 = 1 << 31;
    /// GICD_IGROUPR<n>: one bit per INTID, 1 = group 1.
    pub const IGROUPR: usize = 0x0080;
    /// GICD_ISENABLER<n>: one bit per INTID, write 1 to enable.
    pub const ISENABLER: usize = 0x0100;
    /// GICD_IPRIORITYR<n>: one byte per INTID.
    pub const IPRIORITYR: usize = 0x0400;
    /// GICD_ITARGETSR<n> (GICv2): one byte per INTID, a CPU interface mask.
    pub const ITARGETSR: usize = 0x0800;
    /// GICD_IROUTER<n> (GICv3): 64 bits per INTID, the target affinity.
    pub const IROUTER: usize = 0x6000;
}

/// GICv2 CPU interface registers (GICv2 4.4); the virtual CPU interface has the same layout.
mod gicc {
    /// GICC_CTLR.
    pub const CTLR: usize = 0x00;
    /// GICC_CTLR: enable signalling (group 0 with one security state or in the virtual CPU
    /// interface, group 1 in the Non-secure view).
    pub const CTLR_ENABLE: u32 = 1 << 0;
    /// GICC_PMR: priority mask.
    pub const PMR: usize = 0x04;
    /// GICC_IAR: interrupt acknowledge.
    pub const IAR: usize = 0x0c;
    /// GICC_EOIR: end of interrupt.
    pub const EOIR: usize = 0x10;
}

/// GICv3 redistributor registers (GICv3 12.10), offsets from RD_base.
mod gicr {
    /// GICR_WAKER.
    pub const WAKER: usize = 0x0014;
    /// GICR_WAKER.ProcessorSleep.
    pub const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
    /// GICR_WAKER.ChildrenAsleep.
    pub const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
    /// SGI_base: the second 64 KiB frame, with the SGI and PPI registers.
    pub const SGI_BASE: usize = 0x1_0000;
    /// GICR_IGROUPR0.
    pub const IGROUPR0: usize = SGI_BASE + 0x0080;
    /// GICR_ISENABLER0.
    pub const ISENABLER0: usize = SGI_BASE + 0x0100;
    /// GICR_IPRIORITYR<n>.
    pub const IPRIORITYR: usize = SGI_BASE + 0x0400;
}

/// GICC_PMR value: GICv2 implementations may have as few as 4 priority bits, where 0xf0 is the
/// lowest priority mask that still lets everything of a higher priority through.
const GICV2_PRIORITY_MASK: u32 = 0xf0;
/// ICC_PMR_EL1 value: let every priority through.
const GICV3_PRIORITY_MASK: u64 = 0xff;
/// ICC_SRE_EL1.SRE: use the system register interface.
const ICC_SRE_SRE: u64 = 1 << 0;
/// Bounds the waits for the GIC (GICD_CTLR.RWP, GICR_WAKER.ChildrenAsleep).
const POLL_LIMIT: u32 = 1_000_000;

/// GIC architecture version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// GICv2: memory-mapped CPU interface.
    V2,
    /// GICv3: redistributors and the system register CPU interface.
    V3,
}

impl Version {
    /// The version for a [`Platform::gic_version`] value.
    pub fn from_abi(version: u32) -> Option<Self> {
        match version {
            GIC_V2 => Some(Self::V2),
            GIC_V3 => Some(Self::V3),
            _ => None,
        }
    }

    /// The version number.
    pub fn number(self) -> u32 {
        match self {
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }
}

/// Why the GIC cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The platform names no GIC version this driver knows.
    UnknownVersion(u32),
    /// An address of the platform is 0 or does not fit a pointer.
    BadAddress,
    /// GICv3: ICC_SRE_EL1.SRE stays 0, the system register interface is not available (a
    /// higher exception level disallows it).
    NoSystemRegisterInterface,
    /// The INTID is a special one (1020 and above).
    BadIntid(u32),
}

/// An acknowledged interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acknowledged {
    /// The value read from the acknowledge register; it goes back to the end-of-interrupt
    /// register unchanged (GICv2 keeps the source CPU of an SGI in it).
    raw: u32,
    intid: u32,
}

impl Acknowledged {
    /// The interrupt's INTID.
    pub fn intid(self) -> u32 {
        self.intid
    }
}

/// The GIC, from one CPU's point of view.
#[derive(Clone, Copy, Debug)]
pub struct Gic<M: Mmio = MmioRegion> {
    version: Version,
    distributor: M,
    /// GICv2: the CPU interface; GICv3: this CPU's redistributor (RD_base).
    cpu: M,
}

impl Gic<MmioRegion> {
    /// The GIC a platform describes.
    pub fn from_platform(platform: &Platform) -> Result<Self, Error> {
        let raw = platform.gic_version.get();
        let version = Version::from_abi(raw).ok_or(Error::UnknownVersion(raw))?;
        let address = |value: u64| {
            usize::try_from(value)
                .ok()
                .filter(|&a| a != 0)
                .ok_or(Error::BadAddress)
        };
        let distributor = address(platform.gicd.get())?;
        let cpu = address(platform.gicr_or_gicc.get())?;
        // SAFETY: the platform description comes from the hypervisor (or the built-in bare
        // platform); it names the GIC frames this CPU may access, the hypervisor emulating
        // what the cell may not touch directly.
        let (distributor, cpu) = unsafe { (MmioRegion::new(distributor), MmioRegion::new(cpu)) };
        Ok(Self::new(version, distributor, cpu))
    }

    /// The distributor's base address.
    pub fn distributor_base(&self) -> usize {
        self.distributor.base()
    }

    /// GICv2: the CPU interface's base address; GICv3: the redistributor's.
    pub fn cpu_base(&self) -> usize {
        self.cpu.base()
    }
}

impl<M: Mmio> Gic<M> {
    /// A GIC of `version` with its distributor and, for GICv2, its CPU interface or, for
    /// GICv3, this CPU's redistributor.
    pub const fn new(version: Version, distributor: M, cpu: M) -> Self {
        Self {
            version,
            distributor,
            cpu,
        }
    }

    /// The architecture version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Prepares this CPU to receive interrupts: the distributor forwards group 1 (GICv3) or
    /// its one group (GICv2), the GICv3 redistributor is awake, and the CPU interface signals
    /// every priority. Interrupts stay masked in PSTATE.
    pub fn init(&self) -> Result<(), Error> {
        match self.version {
            Version::V2 => {
                let ctlr = self.distributor.read32(gicd::CTLR);
                if ctlr & gicd::CTLR_ENABLE_GRP0 == 0 {
                    self.distributor
                        .write32(gicd::CTLR, ctlr | gicd::CTLR_ENABLE_GRP0);
                }
                self.cpu.write32(gicc::PMR, GICV2_PRIORITY_MASK);
                self.cpu.write32(gicc::CTLR, gicc::CTLR_ENABLE);
            }
            Version::V3 => {
                sysreg::set_icc_sre_el1(sysreg::icc_sre_el1() | ICC_SRE_SRE);
                sysreg::isb();
                if sysreg::icc_sre_el1() & ICC_SRE_SRE == 0 {
                    return Err(Error::NoSystemRegisterInterface);
                }
                // Affinity routing must be on before group 1 is enabled (GICv3 12.9.4).
                let ctlr = self.distributor.read32(gicd::CTLR);
                if ctlr & gicd::CTLR_ARE == 0 {
                    self.write_distributor_ctlr(ctlr | gicd::CTLR_ARE);
                }
                let ctlr = self.distributor.read32(gicd::CTLR);
                if ctlr & gicd::CTLR_ENABLE_GRP1 == 0 {
                    self.write_distributor_ctlr(ctlr | gicd::CTLR_ENABLE_GRP1);
                }
                let waker = self.cpu.read32(gicr::WAKER);
                if waker & gicr::WAKER_PROCESSOR_SLEEP != 0 {
                    self.cpu
                        .write32(gicr::WAKER, waker & !gicr::WAKER_PROCESSOR_SLEEP);
                    for _ in 0..POLL_LIMIT {
                        if self.cpu.read32(gicr::WAKER) & gicr::WAKER_CHILDREN_ASLEEP == 0 {
                            break;
                        }
                    }
                }
                sysreg::set_icc_pmr_el1(GICV3_PRIORITY_MASK);
                sysreg::set_icc_bpr1_el1(0);
                sysreg::set_icc_igrpen1_el1(1);
                sysreg::isb();
            }
        }
        Ok(())
    }

    /// Writes GICD_CTLR and waits until the write has taken effect (GICv3 GICD_CTLR.RWP).
    fn write_distributor_ctlr(&self, value: u32) {
        self.distributor
            .write32(gicd::CTLR, value & !gicd::CTLR_RWP);
        for _ in 0..POLL_LIMIT {
            if self.distributor.read32(gicd::CTLR) & gicd::CTLR_RWP == 0 {
                break;
            }
        }
    }

    /// Enables interrupt `intid` with `priority` (lower is more urgent), routed to this CPU:
    /// an SGI or PPI of this CPU, or an SPI of the cell.
    pub fn enable(&self, intid: u32, priority: u8) -> Result<(), Error> {
        if intid >= FIRST_SPECIAL {
            return Err(Error::BadIntid(intid));
        }
        let word = 4 * (intid / 32) as usize;
        let bit = 1 << (intid % 32);
        // IPRIORITYR and ITARGETSR hold one byte per interrupt; they are written with 32-bit
        // accesses, the width every emulation of the registers supports.
        let byte_word = (intid & !3) as usize;
        let byte_shift = 8 * (intid % 4);
        let byte_mask = 0xff << byte_shift;
        let priority = u32::from(priority) << byte_shift;

        match self.version {
            Version::V2 => {
                let d = &self.distributor;
                d.modify32(gicd::IPRIORITYR + byte_word, byte_mask, priority);
                if intid >= FIRST_SPI {
                    let target = u32::from(self.own_cpu_interface_mask()) << byte_shift;
                    d.modify32(gicd::ITARGETSR + byte_word, byte_mask, target);
                }
                d.write32(gicd::ISENABLER + word, bit);
            }
            Version::V3 if intid < FIRST_SPI => {
                let r = &self.cpu;
                r.modify32(gicr::IGROUPR0, 0, bit);
                r.modify32(gicr::IPRIORITYR + byte_word, byte_mask, priority);
                r.write32(gicr::ISENABLER0, bit);
            }
            Version::V3 => {
                let d = &self.distributor;
                d.modify32(gicd::IGROUPR + word, 0, bit);
                d.modify32(gicd::IPRIORITYR + byte_word, byte_mask, priority);
                d.write64(
                    gicd::IROUTER + 8 * intid as usize,
                    affinity(sysreg::mpidr_el1()),
                );
                d.write32(gicd::ISENABLER + word, bit);
            }
        }
        Ok(())
    }

    /// GICv2: the bit of this CPU's interface in GICD_ITARGETSR. The first eight of these
    /// registers are read-only and name the reading CPU's interface (GICv2 4.3.12); a GIC with
    /// one CPU interface may read as 0, which then means interface 0.
    fn own_cpu_interface_mask(&self) -> u8 {
        match self.distributor.read32(gicd::ITARGETSR) as u8 {
            0 => 1,
            mask => mask,
        }
    }

    /// Acknowledges the highest-priority pending interrupt; `None` if there is none.
    pub fn acknowledge(&self) -> Option<Acknowledged> {
        // GICv2: INTID in bits 9:0, the source CPU of an SGI in 12:10; GICv3: INTID in 23:0.
        let (raw, intid_mask) = match self.version {
            Version::V2 => (self.cpu.read32(gicc::IAR), 0x3ff),
            Version::V3 => (sysreg::icc_iar1_el1() as u32, 0xff_ffff),
        };
        let intid = raw & intid_mask;
        (!(FIRST_SPECIAL..FIRST_SPECIAL + 4).contains(&intid))
            .then_some(Acknowledged { raw, intid })
    }

    /// Ends (and deactivates) an acknowledged interrupt.
    pub fn end_of_interrupt(&self, acknowledged: Acknowledged) {
        match self.version {
            Version::V2 => self.cpu.write32(gicc::EOIR, acknowledged.raw),
            Version::V3 => sysreg::set_icc_eoir1_el1(acknowledged.raw.into()),
        }
    }
}

/// The GICD_IROUTER value that routes to the CPU with this MPIDR_EL1 value: Aff3 in bits
/// 39:32, Aff2 to Aff0 in 23:0, Interrupt_Routing_Mode 0.
pub fn affinity(mpidr: u64) -> u64 {
    mpidr & 0xff_00ff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::{Access, FakeMmio};
    use crate::sysreg::fake;
    use std::vec;

    fn gic(version: Version) -> Gic<FakeMmio> {
        fake::reset();
        Gic::new(version, FakeMmio::new(), FakeMmio::new())
    }

    #[test]
    fn v3_init_enables_what_is_off() {
        let gic = gic(Version::V3);
        // ICC_SRE_EL1 reads back SRE once written: the fake keeps the value.
        gic.cpu.set(gicr::WAKER, gicr::WAKER_PROCESSOR_SLEEP);
        gic.cpu.script(
            gicr::WAKER,
            &[gicr::WAKER_PROCESSOR_SLEEP, gicr::WAKER_CHILDREN_ASLEEP, 0],
        );
        gic.init().unwrap();
        assert_eq!(
            gic.distributor.writes(),
            vec![
                Access::Write32(gicd::CTLR, gicd::CTLR_ARE),
                Access::Write32(gicd::CTLR, gicd::CTLR_ARE | gicd::CTLR_ENABLE_GRP1),
            ]
        );
        assert_eq!(gic.cpu.writes(), vec![Access::Write32(gicr::WAKER, 0)]);
        assert_eq!(
            fake::take_writes(),
            vec![
                ("icc_sre_el1", 1),
                ("icc_pmr_el1", 0xff),
                ("icc_bpr1_el1", 0),
                ("icc_igrpen1_el1", 1),
            ]
        );
    }

    #[test]
    fn v3_init_leaves_an_enabled_gic_alone() {
        let gic = gic(Version::V3);
        gic.distributor
            .set(gicd::CTLR, gicd::CTLR_ARE | gicd::CTLR_ENABLE_GRP1);
        gic.init().unwrap();
        assert!(gic.distributor.writes().is_empty());
        assert!(gic.cpu.writes().is_empty());
    }

    #[test]
    fn v3_ppi_goes_to_the_redistributor() {
        let gic = gic(Version::V3);
        gic.cpu.set(gicr::IPRIORITYR + 24, 0xa0a0_a0a0);
        gic.enable(27, 0x80).unwrap();
        assert_eq!(
            gic.cpu.writes(),
            vec![
                Access::Write32(0x1_0080, 1 << 27),
                Access::Write32(0x1_0418, 0x80a0_a0a0),
                Access::Write32(0x1_0100, 1 << 27),
            ]
        );
        assert!(gic.distributor.writes().is_empty());
    }

    #[test]
    fn v3_spi_is_routed_to_this_cpu() {
        let gic = gic(Version::V3);
        fake::set("mpidr_el1", 0x8000_0000 | (1 << 32) | 0x0302);
        gic.enable(40, 0x80).unwrap();
        assert_eq!(
            gic.distributor.writes(),
            vec![
                Access::Write32(0x84, 1 << 8),
                Access::Write32(0x428, 0x80),
                Access::Write64(0x6000 + 8 * 40, (1 << 32) | 0x0302),
                Access::Write32(0x104, 1 << 8),
            ]
        );
    }

    #[test]
    fn v2_init_and_spi() {
        let gic = gic(Version::V2);
        gic.init().unwrap();
        assert_eq!(
            gic.distributor.writes(),
            vec![Access::Write32(gicd::CTLR, 1)]
        );
        assert_eq!(
            gic.cpu.writes(),
            vec![Access::Write32(0x04, 0xf0), Access::Write32(0x00, 1)]
        );
        gic.distributor.set(gicd::ITARGETSR, 0x0404_0404);
        gic.enable(54, 0x80).unwrap();
        assert_eq!(
            gic.distributor.writes()[1..],
            [
                Access::Write32(0x434, 0x80_0000),
                Access::Write32(0x834, 0x04_0000),
                Access::Write32(0x104, 1 << 22),
            ]
        );
        assert!(fake::take_writes().is_empty());
    }

    #[test]
    fn v2_acknowledge_keeps_the_source_cpu_for_eoi() {
        let gic = gic(Version::V2);
        gic.cpu.script(gicc::IAR, &[(2 << 10) | 5, 1023]);
        let ack = gic.acknowledge().unwrap();
        assert_eq!(ack.intid(), 5);
        gic.end_of_interrupt(ack);
        assert_eq!(
            gic.cpu.writes(),
            vec![Access::Write32(gicc::EOIR, (2 << 10) | 5)]
        );
        assert_eq!(gic.acknowledge(), None);
    }

    #[test]
    fn v3_acknowledge_uses_the_system_registers() {
        let gic = gic(Version::V3);
        fake::set("icc_iar1_el1", 27);
        let ack = gic.acknowledge().unwrap();
        assert_eq!(ack.intid(), 27);
        gic.end_of_interrupt(ack);
        assert_eq!(fake::take_writes(), vec![("icc_eoir1_el1", 27)]);
        fake::set("icc_iar1_el1", 1023);
        assert_eq!(gic.acknowledge(), None);
        assert_eq!(gic.enable(1020, 0), Err(Error::BadIntid(1020)));
    }

    #[test]
    fn versions_round_trip() {
        for version in [Version::V2, Version::V3] {
            assert_eq!(Version::from_abi(version.number()), Some(version));
        }
        assert_eq!(Version::from_abi(4), None);
    }
}
