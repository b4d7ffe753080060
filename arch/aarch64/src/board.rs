//! What a board crate tells the architecture code: a datasheet summary.

use cellvisor_paging::PhysAddr;
use dtoolkit::fdt::Fdt;
use dtoolkit::ToCellInt;

/// The debug console UART.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartKind {
    /// Arm PrimeCell PL011.
    Pl011,
    /// Cadence UART as in the Xilinx Zynq UltraScale+ PS.
    Cadence,
}

/// A device register window the hypervisor itself maps (uncached, not executable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    /// Name for reports.
    pub name: &'static str,
    /// First register.
    pub base: PhysAddr,
    /// Size in bytes (a multiple of 4 KiB).
    pub size: u64,
}

/// The interrupt controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gic {
    /// GIC distributor (GICD).
    pub distributor: PhysAddr,
    /// GICv2 CPU interface (GICC), if the board has (or may be configured with) a GICv2.
    pub cpu_interface: Option<PhysAddr>,
    /// GICv2 virtual CPU interface (GICV), mapped into cells later.
    pub virtual_cpu_interface: Option<PhysAddr>,
    /// GICv2 virtual interface control (GICH).
    pub hypervisor_interface: Option<PhysAddr>,
    /// GICv3 redistributors (GICR), if the board has (or may be configured with) a GICv3.
    pub redistributors: Option<PhysAddr>,
}

/// Where the list of CPUs comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpus {
    /// A fixed list of MPIDR affinity values.
    Fixed(&'static [u64]),
    /// The `/cpus` node of the device tree the boot loader passes (QEMU generates one whose
    /// CPU count follows `-smp`), with a fixed list if there is none.
    DeviceTree {
        /// Used when no device tree is found.
        fallback: &'static [u64],
    },
}

/// Where the boot loader puts what the hypervisor loads besides itself (on QEMU with
/// `-device loader,file=...,addr=...`; on U-Boot with `load ... <address>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootSlots {
    /// The binary system configuration (inside the hypervisor's memory).
    pub config: PhysAddr,
    /// The root cell's arm64 Linux `Image` (2 MiB aligned, in the root cell's RAM).
    pub kernel: PhysAddr,
}

/// A board: everything the architecture code needs to know about it.
#[derive(Clone, Copy, Debug)]
pub struct Board {
    /// Board name as `cargo xtask build --board` knows it.
    pub name: &'static str,
    /// Hypervisor version string for the banner.
    pub version: &'static str,
    /// Debug console.
    pub uart: (UartKind, PhysAddr),
    /// The CPUs.
    pub cpus: Cpus,
    /// The window RAM of the board lies in (base, size): a device tree passed in x0 is only
    /// read there.
    pub ram: (PhysAddr, u64),
    /// Where a device tree may be found when the boot loader passes none in x0 (QEMU
    /// places it at the start of RAM for ELF images).
    pub dtb_fallback: Option<PhysAddr>,
    /// The interrupt controller.
    pub gic: Gic,
    /// INTID of the EL2 physical timer's interrupt (CNTHP, a PPI; 26 on boards that follow
    /// the Arm Base System Architecture's PPI assignments). The hypervisor wakes itself with
    /// it from waits with a deadline.
    pub hypervisor_timer_irq: u32,
    /// Where the boot loader puts the system configuration and the root cell's kernel.
    pub boot: BootSlots,
}

/// Most CPUs the hypervisor handles on any board (per-CPU data is sized by it).
pub const MAX_CPUS: usize = 64;

/// MPIDR_EL1 affinity fields Aff3 (bits \[39:32\]) and Aff2..Aff0 (bits \[23:0\]).
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// A list of CPUs, by MPIDR affinity.
#[derive(Clone, Copy, Debug)]
pub struct CpuList {
    mpidrs: [u64; MAX_CPUS],
    count: usize,
}

impl CpuList {
    /// The CPUs' MPIDR affinity values.
    pub fn mpidrs(&self) -> &[u64] {
        &self.mpidrs[..self.count]
    }

    /// Index of the CPU with affinity `mpidr`.
    pub fn index_of(&self, mpidr: u64) -> Option<usize> {
        let mpidr = mpidr & MPIDR_AFFINITY_MASK;
        self.mpidrs().iter().position(|&m| m == mpidr)
    }

    /// Moves the CPU with affinity `mpidr` to the front (index 0), keeping the order of the
    /// others; adds it if it is missing (a boot CPU the description forgot).
    pub fn move_to_front(&mut self, mpidr: u64) {
        let mpidr = mpidr & MPIDR_AFFINITY_MASK;
        let position = match self.index_of(mpidr) {
            Some(position) => position,
            None => {
                if self.count == MAX_CPUS {
                    self.count -= 1;
                }
                self.mpidrs[self.count] = mpidr;
                self.count += 1;
                self.count - 1
            }
        };
        self.mpidrs[..=position].rotate_right(1);
    }

    fn from_slice(list: &[u64]) -> Self {
        let mut cpus = CpuList {
            mpidrs: [0; MAX_CPUS],
            count: 0,
        };
        for &mpidr in list.iter().take(MAX_CPUS) {
            cpus.mpidrs[cpus.count] = mpidr & MPIDR_AFFINITY_MASK;
            cpus.count += 1;
        }
        cpus
    }

    /// The CPUs in a device tree's `/cpus` node, in order. `None` when the blob is not a
    /// valid device tree or has no usable CPU nodes.
    pub fn from_device_tree(dtb: &[u8]) -> Option<Self> {
        let fdt = Fdt::new(dtb).ok()?;
        let cpus = fdt.cpus().ok()?;
        let mut list = CpuList {
            mpidrs: [0; MAX_CPUS],
            count: 0,
        };
        for cpu in cpus.cpus() {
            let Some(id) = cpu.ids().ok().and_then(|mut ids| ids.next()) else {
                continue;
            };
            let Ok(mpidr) = id.to_int::<u64>() else {
                continue;
            };
            if list.count == MAX_CPUS {
                break;
            }
            list.mpidrs[list.count] = mpidr & MPIDR_AFFINITY_MASK;
            list.count += 1;
        }
        (list.count > 0).then_some(list)
    }

    /// The board's CPUs: from the device tree if the board says so and one is given.
    pub fn for_board(cpus: Cpus, dtb: Option<&[u8]>) -> Self {
        match cpus {
            Cpus::Fixed(list) => Self::from_slice(list),
            Cpus::DeviceTree { fallback } => dtb
                .and_then(Self::from_device_tree)
                .unwrap_or_else(|| Self::from_slice(fallback)),
        }
    }
}

/// The total size of a flattened device tree from its header, if `header` starts with one
/// (magic 0xd00dfeed, big endian; `totalsize` at offset 4).
pub fn device_tree_size(header: &[u8; 8]) -> Option<usize> {
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    (magic == 0xd00d_feed && (40..=(2 << 20)).contains(&size)).then_some(size as usize)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;
    use vm_fdt::FdtWriter;

    fn tree(cpus: &[u64]) -> Vec<u8> {
        let mut fdt = FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        fdt.property_u32("#address-cells", 2).unwrap();
        fdt.property_u32("#size-cells", 2).unwrap();
        let node = fdt.begin_node("cpus").unwrap();
        fdt.property_u32("#address-cells", 2).unwrap();
        fdt.property_u32("#size-cells", 0).unwrap();
        for &mpidr in cpus {
            let cpu = fdt.begin_node(&std::format!("cpu@{mpidr:x}")).unwrap();
            fdt.property_string("device_type", "cpu").unwrap();
            fdt.property_array_u64("reg", &[mpidr]).unwrap();
            fdt.end_node(cpu).unwrap();
        }
        fdt.end_node(node).unwrap();
        fdt.end_node(root).unwrap();
        fdt.finish().unwrap()
    }

    #[test]
    fn cpus_from_device_tree() {
        let dtb = tree(&[0, 1, 2, 3, 0x100, 0x1_0000_0101]);
        let list = CpuList::from_device_tree(&dtb).unwrap();
        assert_eq!(list.mpidrs(), &[0, 1, 2, 3, 0x100, 0x1_0000_0101]);
        assert_eq!(
            list.index_of(0x8000_0100),
            Some(4),
            "MPIDR bit 31 (RES1) is ignored"
        );
        let header: [u8; 8] = dtb[..8].try_into().unwrap();
        assert_eq!(device_tree_size(&header), Some(dtb.len()));
    }

    #[test]
    fn boot_cpu_first() {
        let mut list = CpuList::for_board(Cpus::Fixed(&[0, 1, 2, 3]), None);
        list.move_to_front(2);
        assert_eq!(list.mpidrs(), &[2, 0, 1, 3]);
        list.move_to_front(0x8000_0007);
        assert_eq!(list.mpidrs(), &[7, 2, 0, 1, 3]);
    }

    #[test]
    fn fallbacks() {
        let fixed = CpuList::for_board(Cpus::Fixed(&[0, 1]), None);
        assert_eq!(fixed.mpidrs(), &[0, 1]);
        let garbage = [0u8; 64];
        let dt = CpuList::for_board(Cpus::DeviceTree { fallback: &[0] }, Some(&garbage));
        assert_eq!(dt.mpidrs(), &[0]);
        assert_eq!(device_tree_size(&[0; 8]), None);
        let empty = tree(&[]);
        assert!(CpuList::from_device_tree(&empty).is_none());
    }
}
