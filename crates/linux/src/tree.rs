//! A device tree for Linux in a cell on Arm (feature `tree`): [`CellTree::build`] writes
//! the flattened tree of exactly what a cell has, from a description its loader makes out of
//! the cell's configuration and the machine's tree.
//!
//! What it holds (Devicetree Specification v0.4 and Linux's bindings in
//! `Documentation/devicetree/bindings`):
//!
//! - `/cpus`: one `cpu@` node per CPU, `reg` = its MPIDR affinity (`arm/cpus.yaml`), enabled
//!   by PSCI;
//! - `/psci` (`arm/psci.yaml`): PSCI 1.0 through SMC or HVC, which the hypervisor answers;
//! - one `memory@` node per RAM range;
//! - the GIC (`interrupt-controller/arm,gic-v3.yaml`, `arm,gic.yaml`): the distributor and,
//!   on GICv3, the redistributors of the cell's CPUs only; on GICv2 the CPU interface (where
//!   the hypervisor maps the virtual one);
//! - the generic timer (`timer/arm,arch_timer.yaml`): PPIs 13, 14, 11 and 10, level high
//!   (on GICv2 with the cell's CPUs in the PPI mask);
//! - the cell's UART, if any, with a fixed clock (`clock/fixed-clock.yaml`) for its clock
//!   inputs, as `serial0` and `stdout-path`;
//! - `/chosen`: the command line and the initramfs.

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use vm_fdt::FdtWriter;

/// The phandle of the interrupt controller.
const GIC_PHANDLE: u32 = 1;
/// The phandle of the UART's clock.
const CLOCK_PHANDLE: u32 = 2;
/// `interrupts` cells: SPI or PPI, then the number, then the flags.
const SPI: u32 = 0;
const PPI: u32 = 1;
/// Level-sensitive, active high.
const LEVEL_HIGH: u32 = 4;
/// The generic timer's PPIs: secure physical, non-secure physical, virtual, hypervisor.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// The cell's interrupt controller, at the machine's addresses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Gic {
    /// A GICv2: the distributor (4 KiB) and the CPU interface (8 KiB) a cell sees.
    V2 {
        /// The distributor.
        distributor: u64,
        /// The CPU interface (the virtual one, mapped there by the hypervisor).
        cpu_interface: u64,
    },
    /// A GICv3: the distributor (64 KiB) and the redistributors of the cell's CPUs.
    V3 {
        /// The distributor.
        distributor: u64,
        /// The first of the cell's redistributors and the bytes they span.
        redistributors: (u64, u64),
    },
}

/// The cell's UART.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Uart<'a> {
    /// Its `compatible` strings, most specific first (`arm,pl011`, `arm,primecell`).
    pub compatible: &'a [&'a str],
    /// Its registers.
    pub address: u64,
    /// Their size.
    pub size: u64,
    /// Its interrupt: the SPI number (the GIC's INTID minus 32).
    pub spi: u32,
    /// Its clock inputs' names (`uartclk`, `apb_pclk`), all fed by one fixed clock.
    pub clock_names: &'a [&'a str],
    /// That clock's rate, in Hz.
    pub clock_hz: u32,
}

/// How the cell calls PSCI.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PsciMethod {
    /// SMC, as firmware is called.
    Smc,
    /// HVC.
    Hvc,
}

/// What a cell has, for its device tree.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CellTree<'a> {
    /// The root's `model`.
    pub model: &'a str,
    /// The CPUs' MPIDR affinity values, the boot CPU first.
    pub cpus: &'a [u64],
    /// RAM: start and size of each range (guest-physical).
    pub memory: &'a [(u64, u64)],
    /// The interrupt controller.
    pub gic: Gic,
    /// The cell's UART, its console.
    pub uart: Option<Uart<'a>>,
    /// The PSCI conduit.
    pub psci: PsciMethod,
    /// The kernel command line.
    pub bootargs: &'a str,
    /// The initramfs: start and size, if any.
    pub initrd: Option<(u64, u64)>,
}

/// Why no tree was written.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TreeError {
    /// The cell has no CPU.
    NoCpu,
    /// The cell has no RAM.
    NoMemory,
    /// More than 8 CPUs on a GICv2, whose PPI mask has 8 bits.
    TooManyCpusForGicV2 {
        /// How many.
        cpus: usize,
    },
    /// The writer refused (a name or string it cannot hold).
    Writer(String),
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCpu => f.write_str("the cell has no CPU"),
            Self::NoMemory => f.write_str("the cell has no RAM"),
            Self::TooManyCpusForGicV2 { cpus } => {
                write!(f, "{cpus} CPUs: a GICv2 serves 8 at most")
            }
            Self::Writer(e) => write!(f, "device tree writer: {e}"),
        }
    }
}

impl core::error::Error for TreeError {}

impl From<vm_fdt::Error> for TreeError {
    fn from(error: vm_fdt::Error) -> Self {
        Self::Writer(format!("{error}"))
    }
}

/// `reg` cells of a 64-bit address and size (`#address-cells` = `#size-cells` = 2).
fn reg(ranges: &[(u64, u64)]) -> Vec<u64> {
    ranges.iter().flat_map(|&(at, size)| [at, size]).collect()
}

impl CellTree<'_> {
    /// The flattened device tree.
    pub fn build(&self) -> Result<Vec<u8>, TreeError> {
        if self.cpus.is_empty() {
            return Err(TreeError::NoCpu);
        }
        if self.memory.is_empty() {
            return Err(TreeError::NoMemory);
        }
        let mut fdt = FdtWriter::new()?;
        let root = fdt.begin_node("")?;
        fdt.property_string("compatible", "cellvisor,cell")?;
        fdt.property_string("model", self.model)?;
        fdt.property_u32("#address-cells", 2)?;
        fdt.property_u32("#size-cells", 2)?;
        fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

        let chosen = fdt.begin_node("chosen")?;
        fdt.property_string("bootargs", self.bootargs)?;
        if let Some((start, size)) = self.initrd {
            fdt.property_u64("linux,initrd-start", start)?;
            fdt.property_u64("linux,initrd-end", start + size)?;
        }
        if self.uart.is_some() {
            fdt.property_string("stdout-path", "serial0")?;
        }
        fdt.end_node(chosen)?;

        if let Some(uart) = self.uart {
            let aliases = fdt.begin_node("aliases")?;
            fdt.property_string("serial0", &format!("/uart@{:x}", uart.address))?;
            fdt.end_node(aliases)?;
        }

        let cpus = fdt.begin_node("cpus")?;
        fdt.property_u32("#address-cells", 2)?;
        fdt.property_u32("#size-cells", 0)?;
        for &mpidr in self.cpus {
            let cpu = fdt.begin_node(&format!("cpu@{mpidr:x}"))?;
            fdt.property_string("device_type", "cpu")?;
            fdt.property_string("compatible", "arm,armv8")?;
            fdt.property_array_u32("reg", &[(mpidr >> 32) as u32, mpidr as u32])?;
            fdt.property_string("enable-method", "psci")?;
            fdt.end_node(cpu)?;
        }
        fdt.end_node(cpus)?;

        let psci = fdt.begin_node("psci")?;
        fdt.property_string_list(
            "compatible",
            ["arm,psci-1.0", "arm,psci-0.2"].map(String::from).to_vec(),
        )?;
        fdt.property_string(
            "method",
            match self.psci {
                PsciMethod::Smc => "smc",
                PsciMethod::Hvc => "hvc",
            },
        )?;
        fdt.end_node(psci)?;

        for &(start, size) in self.memory {
            let memory = fdt.begin_node(&format!("memory@{start:x}"))?;
            fdt.property_string("device_type", "memory")?;
            fdt.property_array_u64("reg", &reg(&[(start, size)]))?;
            fdt.end_node(memory)?;
        }

        let timer_flags = match self.gic {
            Gic::V2 { .. } => {
                if self.cpus.len() > 8 {
                    return Err(TreeError::TooManyCpusForGicV2 {
                        cpus: self.cpus.len(),
                    });
                }
                // The PPI's CPU mask (bits 15:8), one bit per CPU of the cell.
                ((1u32 << self.cpus.len()) - 1) << 8 | LEVEL_HIGH
            }
            Gic::V3 { .. } => LEVEL_HIGH,
        };
        let (gic_name, gic_compatible, gic_reg) = match self.gic {
            Gic::V2 {
                distributor,
                cpu_interface,
            } => (
                format!("interrupt-controller@{distributor:x}"),
                "arm,cortex-a15-gic",
                reg(&[(distributor, 0x1000), (cpu_interface, 0x2000)]),
            ),
            Gic::V3 {
                distributor,
                redistributors,
            } => (
                format!("interrupt-controller@{distributor:x}"),
                "arm,gic-v3",
                reg(&[(distributor, 0x1_0000), redistributors]),
            ),
        };
        let gic = fdt.begin_node(&gic_name)?;
        fdt.property_string("compatible", gic_compatible)?;
        fdt.property_null("interrupt-controller")?;
        fdt.property_u32("#interrupt-cells", 3)?;
        fdt.property_u32("#address-cells", 0)?;
        fdt.property_array_u64("reg", &gic_reg)?;
        if matches!(self.gic, Gic::V3 { .. }) {
            fdt.property_u32("#redistributor-regions", 1)?;
        }
        fdt.property_phandle(GIC_PHANDLE)?;
        fdt.end_node(gic)?;

        let timer = fdt.begin_node("timer")?;
        fdt.property_string("compatible", "arm,armv8-timer")?;
        let interrupts: Vec<u32> = TIMER_PPIS
            .iter()
            .flat_map(|&ppi| [PPI, ppi, timer_flags])
            .collect();
        fdt.property_array_u32("interrupts", &interrupts)?;
        fdt.property_null("always-on")?;
        fdt.end_node(timer)?;

        if let Some(uart) = self.uart {
            let clock = fdt.begin_node("uart-clock")?;
            fdt.property_string("compatible", "fixed-clock")?;
            fdt.property_u32("#clock-cells", 0)?;
            fdt.property_u32("clock-frequency", uart.clock_hz)?;
            fdt.property_phandle(CLOCK_PHANDLE)?;
            fdt.end_node(clock)?;

            let node = fdt.begin_node(&format!("uart@{:x}", uart.address))?;
            fdt.property_string_list(
                "compatible",
                uart.compatible.iter().map(|c| String::from(*c)).collect(),
            )?;
            fdt.property_array_u64("reg", &reg(&[(uart.address, uart.size)]))?;
            fdt.property_array_u32("interrupts", &[SPI, uart.spi, LEVEL_HIGH])?;
            let clocks: Vec<u32> = uart.clock_names.iter().map(|_| CLOCK_PHANDLE).collect();
            fdt.property_array_u32("clocks", &clocks)?;
            fdt.property_string_list(
                "clock-names",
                uart.clock_names.iter().map(|c| String::from(*c)).collect(),
            )?;
            fdt.end_node(node)?;
        }

        fdt.end_node(root)?;
        Ok(fdt.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtoolkit::fdt::Fdt;
    use dtoolkit::{Node, Property};

    const PL011: Uart<'static> = Uart {
        compatible: &["arm,pl011", "arm,primecell"],
        address: 0x0904_0000,
        size: 0x1000,
        spi: 8,
        clock_names: &["uartclk", "apb_pclk"],
        clock_hz: 24_000_000,
    };

    /// Linux in QEMU virt's CPUs 2 and 3, 128 MiB, the second PL011, GICv3.
    fn qemu_cell(gic: Gic) -> CellTree<'static> {
        CellTree {
            model: "cellvisor cell linux",
            cpus: &[2, 3],
            memory: &[(0x7000_0000, 0x800_0000)],
            gic,
            uart: Some(PL011),
            psci: PsciMethod::Smc,
            bootargs: "console=ttyAMA0 earlycon",
            initrd: Some((0x7700_0000, 0x80_0000)),
        }
    }

    fn u32s(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn strings(bytes: &[u8]) -> Vec<&str> {
        bytes
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| core::str::from_utf8(s).unwrap())
            .collect()
    }

    #[test]
    fn a_gicv3_cell_tree() {
        let blob = qemu_cell(Gic::V3 {
            distributor: 0x0800_0000,
            redistributors: (0x080e_0000, 0x4_0000),
        })
        .build()
        .unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let value = |path: &str, name: &str| {
            fdt.find_node(path)
                .unwrap_or_else(|| panic!("no {path}"))
                .property(name)
                .unwrap_or_else(|| panic!("no {path}:{name}"))
                .value()
                .to_vec()
        };
        // Two CPUs with their MPIDRs, enabled by PSCI through SMC.
        assert_eq!(u32s(&value("/cpus/cpu@2", "reg")), [0, 2]);
        assert_eq!(u32s(&value("/cpus/cpu@3", "reg")), [0, 3]);
        assert_eq!(strings(&value("/cpus/cpu@3", "enable-method")), ["psci"]);
        assert!(fdt.find_node("/cpus/cpu@1").is_none());
        assert_eq!(strings(&value("/psci", "method")), ["smc"]);
        // Its RAM only.
        assert_eq!(
            u32s(&value("/memory@70000000", "reg")),
            [0, 0x7000_0000, 0, 0x800_0000]
        );
        // The distributor and the two redistributors.
        assert_eq!(
            u32s(&value("/interrupt-controller@8000000", "reg")),
            [0, 0x0800_0000, 0, 0x1_0000, 0, 0x080e_0000, 0, 0x4_0000]
        );
        assert_eq!(
            strings(&value("/interrupt-controller@8000000", "compatible")),
            ["arm,gic-v3"]
        );
        assert_eq!(
            u32s(&value("/timer", "interrupts")),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
        // The UART, its interrupt (SPI 8, INTID 40), its clock, the console.
        assert_eq!(u32s(&value("/uart@9040000", "interrupts")), [0, 8, 4]);
        assert_eq!(
            strings(&value("/uart@9040000", "clock-names")),
            ["uartclk", "apb_pclk"]
        );
        assert_eq!(u32s(&value("/uart@9040000", "clocks")), [2, 2]);
        assert_eq!(u32s(&value("/uart-clock", "clock-frequency")), [24_000_000]);
        assert_eq!(strings(&value("/aliases", "serial0")), ["/uart@9040000"]);
        assert_eq!(strings(&value("/chosen", "stdout-path")), ["serial0"]);
        assert_eq!(
            strings(&value("/chosen", "bootargs")),
            ["console=ttyAMA0 earlycon"]
        );
        assert_eq!(
            u32s(&value("/chosen", "linux,initrd-end")),
            [0, 0x7780_0000]
        );
    }

    #[test]
    fn a_gicv2_cell_tree_masks_the_timer_ppis_to_its_cpus() {
        let blob = qemu_cell(Gic::V2 {
            distributor: 0x0800_0000,
            cpu_interface: 0x0801_0000,
        })
        .build()
        .unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let timer = fdt.find_node("/timer").unwrap();
        let interrupts = u32s(timer.property("interrupts").unwrap().value());
        assert_eq!(interrupts[..3], [1, 13, 0x304]);
        let gic = fdt.find_node("/interrupt-controller@8000000").unwrap();
        assert_eq!(
            u32s(gic.property("reg").unwrap().value()),
            [0, 0x0800_0000, 0, 0x1000, 0, 0x0801_0000, 0, 0x2000]
        );
        assert!(gic.property("#redistributor-regions").is_none());
    }

    #[test]
    fn refuses_a_cell_without_cpus_or_memory() {
        let gic = Gic::V3 {
            distributor: 0,
            redistributors: (0x2_0000, 0x2_0000),
        };
        let tree = CellTree {
            cpus: &[],
            ..qemu_cell(gic)
        };
        assert_eq!(tree.build(), Err(TreeError::NoCpu));
        let tree = CellTree {
            memory: &[],
            ..qemu_cell(gic)
        };
        assert_eq!(tree.build().unwrap_err().to_string(), "the cell has no RAM");
        let many = [0u64, 1, 2, 3, 4, 5, 6, 7, 8];
        let tree = CellTree {
            cpus: &many,
            ..qemu_cell(Gic::V2 {
                distributor: 0,
                cpu_interface: 0x1_0000,
            })
        };
        assert_eq!(
            tree.build(),
            Err(TreeError::TooManyCpusForGicV2 { cpus: 9 })
        );
    }
}
