//! `cell linux`: Linux in a cell on Arm. What the machine has (CPUs by MPIDR, the GIC, PSCI's
//! conduit, the UARTs) comes from the root cell's device tree (`/sys/firmware/fdt`, the
//! stock tree the hypervisor edited), what the cell has from its configuration; the tree of
//! the cell is written with `cellvisor-linux`'s `CellTree`, the kernel placed with its
//! `arm64::Image`.

use anyhow::{anyhow, bail, Context as _, Result};
use cellvisor_config::{ConsoleKind, MemoryFlags};
use cellvisor_linux::tree::{CellTree, Gic, PsciMethod, Uart};
use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::standard::NodeStandard as _;
use dtoolkit::{Node, Property, ToCellInt as _};

use crate::config::CellFile;

/// A GICv3 redistributor's frames (RD and SGI, 64 KiB each) without VLPIs.
const REDISTRIBUTOR_STRIDE: u64 = 0x2_0000;

/// What the machine's tree says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Hypervisor CPU n's MPIDR affinity (the tree's CPUs in order, as the hypervisor
    /// numbers them).
    pub mpidrs: Vec<u64>,
    /// The GIC.
    pub gic: MachineGic,
    /// PSCI's conduit.
    pub psci: PsciMethod,
    /// Devices with registers, for the cell's UART.
    pub devices: Vec<Device>,
}

/// The machine's GIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineGic {
    /// GICv2: distributor, CPU interface.
    V2 {
        /// The distributor.
        distributor: u64,
        /// The CPU interface.
        cpu_interface: u64,
    },
    /// GICv3: distributor, the first redistributor and their stride.
    V3 {
        /// The distributor.
        distributor: u64,
        /// CPU 0's redistributor.
        redistributors: u64,
        /// Bytes from one CPU's redistributor to the next.
        stride: u64,
    },
}

/// A device node of the machine's tree with what a cell's tree needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its `compatible` strings.
    pub compatible: Vec<String>,
    /// Its first register window.
    pub reg: (u64, u64),
    /// Its first interrupt, if an SPI: the SPI number.
    pub spi: Option<u32>,
    /// Its `clock-names`.
    pub clock_names: Vec<String>,
    /// The rate of its first clock that has a fixed `clock-frequency`.
    pub clock_hz: Option<u32>,
}

/// A node's property as a list of strings (empty if absent).
fn strings(node: &FdtNode<'_>, name: &str) -> Vec<String> {
    node.property(name).map_or_else(Vec::new, |p| {
        p.value()
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    })
}

/// A node's property as 32-bit cells (empty if absent).
fn cells(node: &FdtNode<'_>, name: &str) -> Vec<u32> {
    node.property(name).map_or_else(Vec::new, |p| {
        p.value()
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// The register windows of `node` (its parent's `#address-cells` and `#size-cells`, as
/// `dtoolkit` reads them), those that fit 64 bits.
fn reg(node: FdtNode<'_>) -> Vec<(u64, u64)> {
    node.reg().ok().flatten().map_or_else(Vec::new, |windows| {
        windows
            .filter_map(|w| Some((w.address::<u64>().ok()?, w.size::<u64>().ok()?)))
            .collect()
    })
}

/// Reads the machine's tree. Nodes under buses are taken at their own addresses (the buses
/// of the boards have empty `ranges`: the identity).
pub fn read_machine(blob: &[u8]) -> Result<Machine> {
    // Checked as the hypervisor checks the stock tree: Linux's trees break the spec's
    // 31-character limit on names that `Fdt::new` enforces.
    let fdt: Fdt<'_> = cellvisor_devicetree::validate(blob)
        .map_err(|e| anyhow!("the machine's device tree: {e}"))?;
    // The CPUs as the hypervisor numbers them (`cellvisor-aarch64`'s `CpuList` reads the
    // same `/cpus/cpu*` nodes in the same order).
    let cpus = fdt
        .cpus()
        .map_err(|e| anyhow!("the machine's device tree: {e}"))?;
    let mpidrs: Vec<u64> = cpus
        .cpus()
        .filter_map(|cpu| cpu.ids().ok()?.next()?.to_int::<u64>().ok())
        .collect();
    if mpidrs.is_empty() {
        bail!("the machine's device tree has no CPUs");
    }
    let psci = match fdt
        .find_node("/psci")
        .map(|p| strings(&p, "method"))
        .as_deref()
    {
        Some([method, ..]) if method == "hvc" => PsciMethod::Hvc,
        Some([method, ..]) if method == "smc" => PsciMethod::Smc,
        _ => bail!("the machine's device tree has no /psci node with a method"),
    };

    // Every node with registers, and the phandles of fixed clocks.
    let mut devices: Vec<(Device, Option<u32>)> = Vec::new();
    let mut clocks = Vec::new();
    let mut gic = None;
    let mut stack = vec![fdt.root()];
    while let Some(node) = stack.pop() {
        for child in node.children() {
            stack.push(child);
            let phandle = child.phandle().ok().flatten();
            let rate = cells(&child, "clock-frequency").first().copied();
            if let (Some(phandle), Some(rate)) = (phandle, rate) {
                clocks.push((phandle, rate));
            }
            let windows = reg(child);
            let Some(&first) = windows.first() else {
                continue;
            };
            if child.property("interrupt-controller").is_some() && gic.is_none() {
                if child.is_compatible("arm,gic-v3") {
                    let redistributors = windows
                        .get(1)
                        .context("the GICv3 node has no redistributor window")?
                        .0;
                    let stride = match cells(&child, "redistributor-stride")[..] {
                        [] => REDISTRIBUTOR_STRIDE,
                        ref stride => stride.iter().fold(0, |n, &c| n << 32 | u64::from(c)),
                    };
                    gic = Some(MachineGic::V3 {
                        distributor: first.0,
                        redistributors,
                        stride,
                    });
                } else if ["arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a9-gic"]
                    .iter()
                    .any(|name| child.is_compatible(name))
                {
                    let cpu_interface = windows
                        .get(1)
                        .context("the GICv2 node has no CPU interface window")?
                        .0;
                    gic = Some(MachineGic::V2 {
                        distributor: first.0,
                        cpu_interface,
                    });
                }
            }
            let spi = match cells(&child, "interrupts")[..] {
                [0, spi, _, ..] => Some(spi),
                _ => None,
            };
            let device = Device {
                compatible: strings(&child, "compatible"),
                reg: first,
                spi,
                clock_names: strings(&child, "clock-names"),
                clock_hz: None,
            };
            // The first clock, resolved once every clock is known.
            devices.push((device, cells(&child, "clocks").first().copied()));
        }
    }
    let devices = devices
        .into_iter()
        .map(|(device, clock)| Device {
            clock_hz: clock
                .and_then(|phandle| clocks.iter().find(|(p, _)| *p == phandle))
                .map(|&(_, rate)| rate),
            ..device
        })
        .collect();
    Ok(Machine {
        mpidrs,
        gic: gic.context("the machine's device tree has no GICv2 or GICv3")?,
        psci,
        devices,
    })
}

/// What `cell linux` writes into the cell's tree besides the kernel's placement.
#[derive(Clone, Debug)]
pub struct Description {
    /// MPIDRs of the cell's CPUs.
    pub cpus: Vec<u64>,
    /// The cell's RAM (guest-physical).
    pub memory: Vec<(u64, u64)>,
    /// Its part of the GIC.
    pub gic: Gic,
    /// Its UART: the node of the machine's tree at its console's address, at the cell's
    /// address for it.
    pub uart: Option<(Device, u64)>,
    /// PSCI's conduit.
    pub psci: PsciMethod,
    /// The default console option for the kernel command line.
    pub console: Option<&'static str>,
}

impl Description {
    /// The tree, with `bootargs` and the initramfs.
    pub fn tree(&self, bootargs: &str, initrd: Option<(u64, u64)>) -> Result<Vec<u8>> {
        let compatible: Vec<&str>;
        let clock_names: Vec<&str>;
        let uart = match &self.uart {
            Some((device, address)) => {
                compatible = device.compatible.iter().map(String::as_str).collect();
                clock_names = device.clock_names.iter().map(String::as_str).collect();
                Some(Uart {
                    compatible: &compatible,
                    address: *address,
                    size: device.reg.1,
                    spi: device.spi.context("the cell's UART has no SPI")?,
                    clock_names: &clock_names,
                    clock_hz: device
                        .clock_hz
                        .context("the cell's UART has no fixed clock")?,
                })
            }
            None => None,
        };
        CellTree {
            model: "cellvisor cell",
            cpus: &self.cpus,
            memory: &self.memory,
            gic: self.gic,
            uart,
            psci: self.psci,
            bootargs,
            initrd,
        }
        .build()
        .map_err(|e| anyhow!("its device tree: {e}"))
    }
}

/// The cell's part of `machine`, from its configuration.
pub fn describe(machine: &Machine, file: &CellFile) -> Result<Description> {
    let cell = &file.config.cell;
    let indices: Vec<u32> = cell.cpus.iter().collect();
    let cpus = indices
        .iter()
        .map(|&cpu| {
            machine.mpidrs.get(cpu as usize).copied().with_context(|| {
                format!(
                    "CPU {cpu} is not in the machine's device tree ({} CPUs)",
                    machine.mpidrs.len()
                )
            })
        })
        .collect::<Result<Vec<u64>>>()?;
    let gic = match machine.gic {
        MachineGic::V2 {
            distributor,
            cpu_interface,
        } => Gic::V2 {
            distributor,
            cpu_interface,
        },
        MachineGic::V3 {
            distributor,
            redistributors,
            stride,
        } => {
            let (first, last) = (indices[0], indices[indices.len() - 1]);
            if last - first + 1 != indices.len() as u32 {
                bail!(
                    "CPUs {first} to {last} are not contiguous: the cell's GICv3 redistributors \
                     must be one window"
                );
            }
            Gic::V3 {
                distributor,
                redistributors: (
                    redistributors + u64::from(first) * stride,
                    indices.len() as u64 * stride,
                ),
            }
        }
    };
    let memory: Vec<(u64, u64)> = cell
        .memory_regions
        .iter()
        .filter(|r| {
            !r.flags
                .intersects(MemoryFlags::IO | MemoryFlags::COMM_REGION)
                && r.size != 0
        })
        .map(|r| (r.virt_start, r.size))
        .collect();
    if memory.is_empty() {
        bail!("the cell has no RAM");
    }
    let uart = cell.console.as_ref().and_then(|console| {
        let region = cell.memory_regions.iter().find(|r| {
            r.flags.contains(MemoryFlags::IO)
                && (r.phys_start..r.phys_start.saturating_add(r.size)).contains(&console.address)
        })?;
        let device = machine
            .devices
            .iter()
            .find(|d| d.reg.0 == console.address)?
            .clone();
        let address = region.virt_start + (console.address - region.phys_start);
        Some((device, address))
    });
    let console = cell.console.as_ref().and_then(|c| match c.kind {
        ConsoleKind::Pl011 => Some("console=ttyAMA0"),
        ConsoleKind::Cadence => Some("console=ttyPS0"),
        _ => None,
    });
    Ok(Description {
        cpus,
        memory,
        gic,
        uart,
        psci: machine.psci,
        console,
    })
}
