//! Where the inmate learns about its machine: the device tree in x0 at entry (a program
//! started like a Linux kernel, see [`crate::tree`]), else the [`Platform`] in the cell's
//! communication region, or, in bare builds, a built-in description of the QEMU machine the
//! inmate runs on without a hypervisor.

use cellvisor_abi::comm::{Platform, GIC_V2, GIC_V3, UART_CADENCE, UART_PL011};

use crate::sysreg;

/// QEMU `virt` without a hypervisor (`hw/arm/virt.c`, `base_memmap`): GICv3 if the CPU has
/// the GIC system register interface (ID_AA64PFR0_EL1.GIC, which QEMU sets only with a GICv3),
/// else GICv2; PL011 UART0 at 0x0900_0000; the first CPU's redistributor.
pub fn qemu_virt() -> Platform {
    let gicv3 = (sysreg::id_aa64pfr0_el1() >> 24) & 0xf != 0;
    Platform {
        gic_version: if gicv3 { GIC_V3 } else { GIC_V2 }.into(),
        uart_kind: UART_PL011.into(),
        gicd: 0x0800_0000.into(),
        gicr_or_gicc: if gicv3 { 0x080a_0000 } else { 0x0801_0000 }.into(),
        uart: 0x0900_0000.into(),
        timer_frequency: sysreg::cntfrq_el0().into(),
        cpus: 1.into(),
        reserved: 0.into(),
    }
}

/// The ZynqMP (ZCU102, QEMU `xlnx-zcu102`) without a hypervisor (UG1085 "System Addresses"):
/// GIC-400 distributor at 0xf901_0000, CPU interface at 0xf902_0000, Cadence UART0 at
/// 0xff00_0000.
pub fn zcu102() -> Platform {
    Platform {
        gic_version: GIC_V2.into(),
        uart_kind: UART_CADENCE.into(),
        gicd: 0xf901_0000.into(),
        gicr_or_gicc: 0xf902_0000.into(),
        uart: 0xff00_0000.into(),
        timer_frequency: sysreg::cntfrq_el0().into(),
        cpus: 1.into(),
        reserved: 0.into(),
    }
}

/// This inmate's platform: in bare builds the built-in one; otherwise the communication
/// region's, `None` if the hypervisor has not set the region up. A timer frequency of 0 is
/// replaced by CNTFRQ_EL0.
// Only the target runtime (`rt`) uses it.
#[cfg_attr(not(inmate_hw), allow(dead_code))]
pub(crate) fn discover() -> Option<Platform> {
    let mut platform = if cfg!(feature = "bare-virt") {
        qemu_virt()
    } else if cfg!(feature = "bare-zcu102") {
        zcu102()
    } else if let Some(platform) = from_boot_tree() {
        platform
    } else {
        // Bare machines may have nothing at the region's address (an access aborts), so only
        // cell builds read it.
        from_comm_region()?
    };
    if platform.timer_frequency.get() == 0 {
        platform.timer_frequency = sysreg::cntfrq_el0().into();
    }
    Some(platform)
}

/// The platform of the device tree in x0 at entry ([`crate::boot_argument`]), if there is
/// one: a program started like a Linux kernel (`cellvisor cell linux --raw`). On a GICv3
/// the running CPU's redistributor is the one whose `GICR_TYPER` names its affinity.
#[cfg(inmate_hw)]
fn from_boot_tree() -> Option<Platform> {
    use crate::tree::{Machine, TreeGic};
    // SAFETY: x0 at entry is 0 (`cellvisor cell start`, refused before any read) or the
    // address of a device tree in the cell's RAM that nothing else writes (the Linux boot
    // protocol that `cellvisor cell linux` follows); `Machine::at` reads the header first
    // and the rest only behind the FDT magic.
    let machine = unsafe { Machine::at(crate::boot_argument()) }.ok()?;
    let redistributor = match machine.gic {
        TreeGic::V2 { .. } => 0,
        TreeGic::V3 {
            redistributors,
            stride,
            ..
        } => find_redistributor(redistributors, stride, sysreg::mpidr_el1())?,
    };
    Some(machine.platform(redistributor))
}

/// Host builds have no boot argument.
#[cfg(not(inmate_hw))]
fn from_boot_tree() -> Option<Platform> {
    None
}

/// The redistributor in `(base, size)` whose `GICR_TYPER[63:32]` is the affinity of
/// `mpidr`, stopping at the one marked last (`GICR_TYPER.Last`, bit 4).
#[cfg(inmate_hw)]
fn find_redistributor((base, size): (u64, u64), stride: u64, mpidr: u64) -> Option<u64> {
    use crate::mmio::{Mmio as _, MmioRegion};
    const TYPER: usize = 0x8;
    const LAST: u32 = 1 << 4;
    let affinity = crate::tree::typer_affinity(mpidr);
    let stride = stride.max(0x2_0000);
    let mut frame = base;
    while frame < base.saturating_add(size) {
        // SAFETY: a redistributor frame of the GIC the device tree describes; two 32-bit
        // reads of its GICR_TYPER, which have no side effects.
        let region = unsafe { MmioRegion::new(usize::try_from(frame).ok()?) };
        if region.read32(TYPER + 4) == affinity {
            return Some(frame);
        }
        if region.read32(TYPER) & LAST != 0 {
            break;
        }
        frame = frame.checked_add(stride)?;
    }
    None
}

/// The platform in the communication region at its fixed address.
// Only the target runtime (`rt`) uses it.
#[cfg_attr(not(inmate_hw), allow(dead_code))]
fn from_comm_region() -> Option<Platform> {
    use crate::comm::{Comm, COMM_REGION_ADDRESS};
    use crate::mmio::MmioRegion;

    // SAFETY: every cell configuration of a cellvisor inmate has its communication region at
    // this address (see `COMM_REGION_ADDRESS`); the region is read with single loads only.
    let comm = Comm::new(unsafe { MmioRegion::new(COMM_REGION_ADDRESS) });
    let platform = comm.platform()?;
    // SAFETY: the region is valid, so it is this cell's communication region.
    unsafe { crate::comm::set_region(COMM_REGION_ADDRESS) };
    Some(platform)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysreg::fake;

    #[test]
    fn qemu_virt_follows_the_cpu_interface() {
        fake::reset();
        fake::set("cntfrq_el0", 62_500_000);
        let v2 = qemu_virt();
        assert_eq!(v2.gic_version.get(), 2);
        assert_eq!(v2.gicr_or_gicc.get(), 0x0801_0000);
        assert_eq!(v2.timer_frequency.get(), 62_500_000);
        fake::set("id_aa64pfr0_el1", 0x0100_0022);
        let v3 = qemu_virt();
        assert_eq!(v3.gic_version.get(), 3);
        assert_eq!(v3.gicr_or_gicc.get(), 0x080a_0000);
        assert_eq!(v3.uart.get(), 0x0900_0000);
    }

    #[test]
    fn zcu102_is_a_gic400_with_cadence_uarts() {
        let platform = zcu102();
        assert_eq!(platform.gic_version.get(), 2);
        assert_eq!(platform.uart_kind.get(), UART_CADENCE);
    }
}
