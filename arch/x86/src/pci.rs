//! PCI configuration space as the cells see it: the ports of configuration mechanism #1
//! (0xCF8-0xCFF, in the I/O permission map) and the ECAM window (left out of the nested page
//! tables) trap, and each access is decided by `cellvisor-pci`. The hypervisor reaches the
//! hardware through the ECAM window the firmware's MCFG names ([`Ecam`]), under one lock.

use cellvisor_apic::Topology;
use cellvisor_cell::CellId;
use cellvisor_config::Bdf;
use cellvisor_pci::{Accessor, ConfigSpace, MsiPolicy, Outcome, PciConfig, PciViolation};
use cellvisor_sync::Mutex;

/// CONFIG_ADDRESS, the reset control register between it and CONFIG_DATA, and the end of
/// CONFIG_DATA.
pub const PORTS: (u16, u16) = (0xcf8, 0xcff);
/// The reset control register (ICH9): the root cell's, passed through.
pub const RESET_CONTROL: u16 = 0xcf9;

/// The ECAM window of PCI segment 0: its base and the buses it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ecam {
    /// Where bus 0 starts.
    pub base: u64,
    /// The first bus.
    pub first_bus: u8,
    /// The last bus.
    pub last_bus: u8,
}

impl Ecam {
    /// The window's size in bytes.
    pub fn size(&self) -> u64 {
        (u64::from(self.last_bus) + 1) << 20
    }

    /// Whether physical address `address` lies in the window.
    pub fn contains(&self, address: u64) -> bool {
        (self.base..self.base + self.size()).contains(&address)
    }

    /// The address of `reg` of `bdf`, if the window covers its bus.
    fn address(&self, bdf: Bdf, reg: u16, size: u8) -> Option<u64> {
        let aligned = u64::from(reg) % u64::from(size) == 0 && reg < 0x1000;
        ((self.first_bus..=self.last_bus).contains(&bdf.bus()) && aligned).then(|| {
            self.base
                + (u64::from(bdf.bus()) << 20
                    | u64::from(bdf.device()) << 15
                    | u64::from(bdf.function()) << 12
                    | u64::from(reg))
        })
    }
}

impl ConfigSpace for Ecam {
    fn read(&mut self, bdf: Bdf, reg: u16, size: u8) -> u32 {
        let Some(at) = self.address(bdf, reg, size) else {
            return u32::MAX;
        };
        // SAFETY: the ECAM window is below 4 GiB (checked at `init`), mapped uncached one to
        // one in the hypervisor's boot map; `at` is aligned to `size` inside it. A read of
        // configuration space has no side effect the policy did not allow.
        unsafe {
            match size {
                1 => u32::from((at as *const u8).read_volatile()),
                2 => u32::from((at as *const u16).read_volatile()),
                _ => (at as *const u32).read_volatile(),
            }
        }
    }

    fn write(&mut self, bdf: Bdf, reg: u16, size: u8, value: u32) {
        let Some(at) = self.address(bdf, reg, size) else {
            return;
        };
        // SAFETY: as for reads; the policy decided the write.
        unsafe {
            match size {
                1 => (at as *mut u8).write_volatile(value as u8),
                2 => (at as *mut u16).write_volatile(value as u16),
                _ => (at as *mut u32).write_volatile(value),
            }
        }
    }
}

/// How the hypervisor reaches configuration space: the ECAM window the firmware's MCFG names,
/// or, on machines without one (Bochs' i440FX), mechanism #1's ports, which cover the first
/// 256 bytes of each function. (The CPUs' accesses to those ports trap, so only the
/// hypervisor uses them, under [`PCI`]'s lock.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hardware {
    /// The ECAM window.
    Ecam(Ecam),
    /// CONFIG_ADDRESS and CONFIG_DATA.
    Ports,
}

impl Hardware {
    /// CONFIG_ADDRESS's value for `reg` of `bdf` (its dword), if mechanism #1 reaches it.
    fn config_address(bdf: Bdf, reg: u16, size: u8) -> Option<u32> {
        let aligned = reg.is_multiple_of(u16::from(size)) && reg < 0x100;
        aligned.then(|| 1 << 31 | u32::from(bdf.0) << 8 | u32::from(reg & 0xfc))
    }
}

impl ConfigSpace for Hardware {
    fn read(&mut self, bdf: Bdf, reg: u16, size: u8) -> u32 {
        let address = match self {
            Self::Ecam(ecam) => return ecam.read(bdf, reg, size),
            Self::Ports => Self::config_address(bdf, reg, size),
        };
        address.map_or(u32::MAX, |address| {
            mechanism_1::read(address, PORTS.0 + 4 + (reg & 3), size)
        })
    }

    fn write(&mut self, bdf: Bdf, reg: u16, size: u8, value: u32) {
        let address = match self {
            Self::Ecam(ecam) => return ecam.write(bdf, reg, size, value),
            Self::Ports => Self::config_address(bdf, reg, size),
        };
        if let Some(address) = address {
            mechanism_1::write(address, PORTS.0 + 4 + (reg & 3), size, value);
        }
    }
}

/// CONFIG_ADDRESS, then CONFIG_DATA at `data`: the configuration ports, which only the
/// hypervisor uses (they trap for every cell), under [`PCI`]'s lock, for accesses the policy
/// allowed. (Other architectures, where the pure parts of this crate are tested, have no
/// I/O ports: reads are all ones, writes go nowhere.)
mod mechanism_1 {
    #[cfg(target_arch = "x86_64")]
    pub fn read(address: u32, data: u16, size: u8) -> u32 {
        use x86_64::instructions::port::Port;
        // SAFETY: see the module; port I/O has no memory effect.
        unsafe {
            Port::<u32>::new(super::PORTS.0).write(address);
            match size {
                1 => u32::from(Port::<u8>::new(data).read()),
                2 => u32::from(Port::<u16>::new(data).read()),
                _ => Port::<u32>::new(data).read(),
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    pub fn write(address: u32, data: u16, size: u8, value: u32) {
        use x86_64::instructions::port::Port;
        // SAFETY: as for `read`.
        unsafe {
            Port::<u32>::new(super::PORTS.0).write(address);
            match size {
                1 => Port::<u8>::new(data).write(value as u8),
                2 => Port::<u16>::new(data).write(value as u16),
                _ => Port::<u32>::new(data).write(value),
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn read(_address: u32, _data: u16, _size: u8) -> u32 {
        u32::MAX
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn write(_address: u32, _data: u16, _size: u8, _value: u32) {}
}

/// Where an x86 cell's device may send an MSI (Intel SDM Vol. 3A §11.11, AMD APM Vol. 2
/// §16.7): the local APICs' window 0xFEExxxxx, a physical destination that is a CPU of the
/// cell, and the fixed or lowest-priority delivery mode (never SMI, INIT or ExtINT). The
/// root cell's devices may also send NMIs and use logical destinations (it owns every CPU
/// no cell has, and its NMIs are its own); another cell's NMI would be taken for the
/// hypervisor's kick, and a logical destination can name any CPU.
#[derive(Clone, Copy, Debug)]
pub struct X86Msi<'a> {
    /// The machine's CPUs.
    pub topology: &'a Topology,
    /// The CPUs of the cell whose function is configured.
    pub cpus: &'a cellvisor_config::CpuSet,
}

impl MsiPolicy for X86Msi<'_> {
    fn allowed(&self, cell: CellId, address: u64, data: u32) -> bool {
        if address >> 20 != 0xfee {
            return false;
        }
        let root = cell == CellId::ROOT;
        let delivery = (data >> 8) & 0b111;
        let allowed = matches!(delivery, 0b000 | 0b001) || root && delivery == 0b100;
        if !allowed {
            return false;
        }
        let logical = address & (1 << 2) != 0;
        let destination = ((address >> 12) & 0xff) as u32;
        (logical && root)
            || !logical
                && self
                    .topology
                    .cpu_of(destination)
                    .is_some_and(|cpu| self.cpus.contains(cpu))
    }
}

/// The configuration space's books and the hardware's window.
pub static PCI: Mutex<Option<(PciConfig, Hardware)>> = Mutex::new(None);

/// Every function the root cell's, the hardware through `hardware`; the boot CPU, before any
/// cell runs.
pub fn init(hardware: Hardware) {
    *PCI.lock() = Some((PciConfig::new(), hardware));
}

/// What was accessed: a port, or an offset in the ECAM window.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// An I/O port of mechanism #1.
    Port(u16),
    /// An offset in the ECAM window.
    Ecam(u64),
}

/// One trapped access of `size` bytes by CPU `cpu` of `cell`.
pub fn access(
    msi: &X86Msi<'_>,
    cell: CellId,
    cpu: u32,
    target: Target,
    size: u8,
    write: Option<u32>,
) -> Result<Outcome, PciViolation> {
    let mut pci = PCI.lock();
    let Some((config, hw)) = pci.as_mut() else {
        return Ok(match write {
            Some(_) => Outcome::Written,
            None => Outcome::Read(u32::MAX),
        });
    };
    let by = Accessor { cell, cpu };
    match target {
        Target::Port(port) => config.port(hw, msi, by, port, size, write),
        Target::Ecam(offset) => config.ecam(hw, msi, by, offset, size, write),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_policy() {
        let topology = Topology::new(&[0, 1, 2, 3]).unwrap();
        let root_cpus = cellvisor_config::CpuSet::from_cpus([0, 1, 2]);
        let msi = X86Msi {
            topology: &topology,
            cpus: &root_cpus,
        };
        // Fixed, physical destination 2: allowed; 7 is no CPU.
        assert!(msi.allowed(CellId::ROOT, 0xfee0_2000, 0x41));
        assert!(!msi.allowed(CellId::ROOT, 0xfee0_7000, 0x41));
        // Logical destinations for the root cell.
        assert!(msi.allowed(CellId::ROOT, 0xfee0_f004, 0x41));
        // NMI yes; SMI (010), INIT (101) and ExtINT (111) no.
        assert!(msi.allowed(CellId::ROOT, 0xfee0_0000, 0x400));
        for mode in [0b010, 0b101, 0b111] {
            assert!(!msi.allowed(CellId::ROOT, 0xfee0_0000, mode << 8 | 0x41));
        }
        // Outside the local APICs' window; a CPU of another cell.
        assert!(!msi.allowed(CellId::ROOT, 0xfec0_0000, 0x41));
        assert!(!msi.allowed(CellId::ROOT, 0xfee0_3000, 0x41));

        // A cell with CPU 3: fixed and lowest priority to CPU 3, physical only, no NMI.
        let cell_cpus = cellvisor_config::CpuSet::from_cpus([3]);
        let msi = X86Msi {
            topology: &topology,
            cpus: &cell_cpus,
        };
        assert!(msi.allowed(CellId(1), 0xfee0_3000, 0x41));
        assert!(msi.allowed(CellId(1), 0xfee0_3000, 0x141));
        assert!(!msi.allowed(CellId(1), 0xfee0_2000, 0x41));
        assert!(!msi.allowed(CellId(1), 0xfee0_3000, 0x400));
        assert!(!msi.allowed(CellId(1), 0xfee0_8004, 0x41));
    }

    #[test]
    fn ecam_addresses() {
        let ecam = Ecam {
            base: 0xb000_0000,
            first_bus: 0,
            last_bus: 0xff,
        };
        assert_eq!(ecam.size(), 0x1000_0000);
        assert!(ecam.contains(0xb000_0000) && ecam.contains(0xbfff_ffff));
        assert!(!ecam.contains(0xc000_0000) && !ecam.contains(0xafff_ffff));
        let bdf = Bdf::new(1, 2, 3).unwrap();
        assert_eq!(ecam.address(bdf, 0x104, 4), Some(0xb011_3104));
        assert_eq!(ecam.address(bdf, 0x102, 4), None);
        assert_eq!(ecam.address(bdf, 0x1000, 1), None);
        let small = Ecam {
            last_bus: 0,
            ..ecam
        };
        assert_eq!(small.address(bdf, 0, 4), None);
    }

    #[test]
    fn mechanism_1_addresses() {
        let bdf = Bdf::new(1, 2, 3).unwrap();
        // Enable bit, bus 1, device 2, function 3, the register's dword.
        assert_eq!(Hardware::config_address(bdf, 0x3e, 2), Some(0x8001_133c));
        assert_eq!(Hardware::config_address(bdf, 0x3d, 1), Some(0x8001_133c));
        assert_eq!(Hardware::config_address(bdf, 0x3e, 4), None);
        assert_eq!(Hardware::config_address(bdf, 0x100, 4), None);
    }
}
