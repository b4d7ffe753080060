//! The machine from a flattened device tree: what a program started like a Linux kernel
//! (`cellvisor cell linux --raw`, or a boot loader's `booti`) finds in x0. The tree names
//! the UART (`/chosen/stdout-path`, else the first PL011 or Cadence UART), the GIC (v2 or
//! v3), the CPUs with their PSCI conduit, the RAM and the virtual timer's interrupt.
//!
//! [`Machine::read`] only parses; the GICv3 redistributor of the running CPU is found by
//! the runtime, which reads the redistributors' `GICR_TYPER` ([`Machine::platform`] takes
//! the address it found).

use cellvisor_abi::comm::{Platform, GIC_V2, GIC_V3, UART_CADENCE, UART_PL011};
use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::standard::NodeStandard as _;
use dtoolkit::{Node as _, Property as _, ToCellInt as _};

use crate::psci::Conduit;

/// FDT magic, the first big-endian word of every flattened device tree (Devicetree
/// Specification §5.2).
pub const MAGIC: u32 = 0xd00d_feed;
/// The largest tree [`Machine::at`] reads (Linux's limit for arm64 is 2 MiB).
pub const MAX_SIZE: u32 = 2 << 20;
/// The CPUs a [`Machine`] keeps.
pub const MAX_CPUS: usize = 8;
/// The distance between two GICv3 redistributors without `redistributor-stride`: RD_base
/// and SGI_base, 64 KiB each (IHI 0069 §12.10).
pub const REDISTRIBUTOR_STRIDE: u64 = 0x2_0000;

/// The GIC the tree describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeGic {
    /// GICv2: the distributor and the CPU interface.
    V2 {
        /// GICD base.
        distributor: u64,
        /// GICC base.
        cpu_interface: u64,
    },
    /// GICv3: the distributor and the redistributor region.
    V3 {
        /// GICD base.
        distributor: u64,
        /// The first redistributor and the bytes the region spans.
        redistributors: (u64, u64),
        /// The distance between two redistributors.
        stride: u64,
    },
}

/// What [`Machine::read`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// The GIC.
    pub gic: TreeGic,
    /// The console UART: its kind (`cellvisor_abi::comm::UART_*`) and address.
    pub uart: Option<(u32, u64)>,
    /// The MPIDR affinity (`reg`) of each CPU node, in the tree's order; `cpu_count` are
    /// valid.
    pub cpus: [u64; MAX_CPUS],
    /// How many of `cpus` are valid.
    pub cpu_count: usize,
    /// The PSCI conduit of `/psci`, if the tree has one.
    pub psci: Option<Conduit>,
    /// The first RAM window of `/memory`: address and size.
    pub memory: Option<(u64, u64)>,
    /// The INTID of the non-secure virtual timer (the third interrupt of the
    /// `arm,armv8-timer` node, a PPI).
    pub virtual_timer: Option<u32>,
    /// The tree's size in bytes (`totalsize`).
    pub size: u32,
}

/// Why a tree could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeError {
    /// The address is 0 or not 8-byte aligned, or holds no FDT magic.
    NotATree,
    /// The header's size is below the header or above [`MAX_SIZE`].
    BadSize(u32),
    /// The tree does not parse.
    Malformed,
    /// No GICv2 or GICv3 node with its two register windows.
    NoGic,
    /// No CPU node with a `reg`.
    NoCpus,
}

impl core::fmt::Display for TreeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotATree => f.write_str("no device tree there (no FDT magic)"),
            Self::BadSize(size) => write!(f, "the tree's totalsize {size} is not plausible"),
            Self::Malformed => f.write_str("the tree does not parse"),
            Self::NoGic => f.write_str("the tree has no GICv2 or GICv3 with its registers"),
            Self::NoCpus => f.write_str("the tree has no CPU with a reg"),
        }
    }
}

/// A property as big-endian 32-bit cells, at most `N` (the rest are dropped).
fn cells<const N: usize>(node: &FdtNode<'_>, name: &str) -> ([u32; N], usize) {
    let mut out = [0; N];
    let mut count = 0;
    if let Some(property) = node.property(name) {
        for (slot, chunk) in out.iter_mut().zip(property.value().chunks_exact(4)) {
            *slot = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            count += 1;
        }
    }
    (out, count)
}

/// Copies the first string of a property into `buffer`; returns it (`None` if absent, too
/// long or not UTF-8).
fn first_string<'b>(node: &FdtNode<'_>, name: &str, buffer: &'b mut [u8]) -> Option<&'b str> {
    let property = node.property(name)?;
    let value = property.value();
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    let out = buffer.get_mut(..end)?;
    out.copy_from_slice(&value[..end]);
    core::str::from_utf8(out).ok()
}

/// Whether the first string of a property is `expected`.
fn string_is(node: &FdtNode<'_>, name: &str, expected: &str) -> bool {
    let mut buffer = [0u8; 32];
    first_string(node, name, &mut buffer) == Some(expected)
}

/// The first two register windows of a node.
fn windows(node: FdtNode<'_>) -> [Option<(u64, u64)>; 2] {
    let mut out = [None; 2];
    if let Ok(Some(regs)) = node.reg() {
        for (slot, window) in out.iter_mut().zip(regs) {
            *slot = window.address::<u64>().ok().zip(window.size::<u64>().ok());
        }
    }
    out
}

/// The UART kind a node is compatible with.
fn uart_kind(node: &FdtNode<'_>) -> Option<u32> {
    if node.is_compatible("arm,pl011") {
        Some(UART_PL011)
    } else if node.is_compatible("cdns,uart-r1p12") || node.is_compatible("xlnx,xuartps") {
        Some(UART_CADENCE)
    } else {
        None
    }
}

impl Machine {
    /// Reads the tree at `address` (x0 at entry), if there is one: the magic and a
    /// plausible size are checked before more than the header is read.
    ///
    /// # Safety
    ///
    /// Unless `address` is 0 or misaligned, its first 8 bytes must be readable memory; if
    /// they hold the FDT magic, so must `totalsize` bytes, which nothing writes while the
    /// returned value lives (`'static`: the program keeps the tree where its loader put it).
    pub unsafe fn at(address: u64) -> Result<Self, TreeError> {
        let Ok(address) = usize::try_from(address) else {
            return Err(TreeError::NotATree);
        };
        if address == 0 || !address.is_multiple_of(8) {
            return Err(TreeError::NotATree);
        }
        // SAFETY: the caller guarantees the header is readable; volatile, as the MMU may
        // be off (Device memory).
        let header = unsafe { core::ptr::read_volatile(address as *const [u32; 2]) };
        if u32::from_be(header[0]) != MAGIC {
            return Err(TreeError::NotATree);
        }
        let size = u32::from_be(header[1]);
        if !(40..=MAX_SIZE).contains(&size) {
            return Err(TreeError::BadSize(size));
        }
        // SAFETY: with the magic there, the caller guarantees `size` readable bytes that
        // stay unchanged.
        let blob: &'static [u8] =
            unsafe { core::slice::from_raw_parts(address as *const u8, size as usize) };
        Self::read(blob)
    }

    /// Reads a tree.
    pub fn read(blob: &[u8]) -> Result<Self, TreeError> {
        if blob.len() < 8 || blob[..4] != MAGIC.to_be_bytes() {
            return Err(TreeError::NotATree);
        }
        let fdt = Fdt::new(blob).map_err(|_| TreeError::Malformed)?;
        let mut cpus = [0; MAX_CPUS];
        let mut cpu_count = 0;
        if let Ok(list) = fdt.cpus() {
            for cpu in list.cpus() {
                let mpidr = cpu
                    .ids()
                    .ok()
                    .and_then(|mut ids| ids.next())
                    .and_then(|id| id.to_int::<u64>().ok());
                if let (Some(mpidr), Some(slot)) = (mpidr, cpus.get_mut(cpu_count)) {
                    *slot = mpidr;
                    cpu_count += 1;
                }
            }
        }
        if cpu_count == 0 {
            return Err(TreeError::NoCpus);
        }
        let psci = fdt.find_node("/psci").and_then(|node| {
            if string_is(&node, "method", "hvc") {
                Some(Conduit::Hvc)
            } else if string_is(&node, "method", "smc") {
                Some(Conduit::Smc)
            } else {
                None
            }
        });
        let memory = fdt
            .find_node("/memory")
            .or_else(|| {
                fdt.root()
                    .children()
                    .find(|n| string_is(n, "device_type", "memory"))
            })
            .and_then(|node| windows(node)[0]);
        let mut path = [0u8; 128];
        let stdout = fdt
            .find_node("/chosen")
            .and_then(|chosen| first_string(&chosen, "stdout-path", &mut path))
            .map(|path| path.split(':').next().unwrap_or(path))
            .and_then(|path| fdt.find_node(path));

        let mut gic = None;
        let mut uart = stdout.and_then(|node| Some((uart_kind(&node)?, windows(node)[0]?.0)));
        let mut virtual_timer = None;
        // Depth first over every node (the cell trees are flat; machine trees have buses
        // with identity `ranges`).
        let mut stack: [Option<FdtNode<'_>>; 8] = [None; 8];
        stack[0] = Some(fdt.root());
        let mut depth = 1;
        while depth > 0 {
            depth -= 1;
            let Some(node) = stack[depth].take() else {
                continue;
            };
            for child in node.children() {
                if depth < stack.len() && child.children().next().is_some() {
                    stack[depth] = Some(child);
                    depth += 1;
                }
                if child.is_compatible("arm,armv8-timer") {
                    // <type number flags> x 4: secure, non-secure physical, virtual, hyp.
                    let (timer, count) = cells::<12>(&child, "interrupts");
                    if count >= 9 && timer[6] == 1 {
                        virtual_timer = Some(16 + timer[7]);
                    }
                }
                if gic.is_none() && child.property("interrupt-controller").is_some() {
                    gic = read_gic(&child);
                }
                if uart.is_none() {
                    uart = uart_kind(&child).zip(windows(child)[0].map(|w| w.0));
                }
            }
        }
        Ok(Self {
            gic: gic.ok_or(TreeError::NoGic)?,
            uart,
            cpus,
            cpu_count,
            psci,
            memory,
            virtual_timer,
            size: u32::try_from(blob.len()).unwrap_or(u32::MAX),
        })
    }

    /// The CPUs' MPIDR affinities.
    pub fn cpus(&self) -> &[u64] {
        &self.cpus[..self.cpu_count]
    }

    /// The [`Platform`] of this machine for the CPU whose GICv3 redistributor is at
    /// `redistributor` (ignored for a GICv2); the timer frequency is left 0 (the runtime
    /// takes CNTFRQ_EL0).
    pub fn platform(&self, redistributor: u64) -> Platform {
        let (version, gicd, cpu) = match self.gic {
            TreeGic::V2 {
                distributor,
                cpu_interface,
            } => (GIC_V2, distributor, cpu_interface),
            TreeGic::V3 { distributor, .. } => (GIC_V3, distributor, redistributor),
        };
        let (uart_kind, uart) = self.uart.unwrap_or((0, 0));
        Platform {
            gic_version: version.into(),
            uart_kind: uart_kind.into(),
            gicd: gicd.into(),
            gicr_or_gicc: cpu.into(),
            uart: uart.into(),
            timer_frequency: 0.into(),
            cpus: (self.cpu_count as u32).into(),
            reserved: 0.into(),
        }
    }
}

/// The GIC of an interrupt controller node, if it is a GICv2 or GICv3 with its windows.
fn read_gic(node: &FdtNode<'_>) -> Option<TreeGic> {
    let [first, second] = windows(*node);
    let (distributor, second) = (first?.0, second?);
    if node.is_compatible("arm,gic-v3") {
        let stride = match cells::<2>(node, "redistributor-stride") {
            (_, 0) => REDISTRIBUTOR_STRIDE,
            ([one, _], 1) => u64::from(one),
            ([high, low], _) => u64::from(high) << 32 | u64::from(low),
        };
        Some(TreeGic::V3 {
            distributor,
            redistributors: second,
            stride,
        })
    } else if ["arm,gic-400", "arm,cortex-a15-gic", "arm,cortex-a9-gic"]
        .iter()
        .any(|name| node.is_compatible(name))
    {
        Some(TreeGic::V2 {
            distributor,
            cpu_interface: second.0,
        })
    } else {
        None
    }
}

/// The affinity a GICv3 redistributor reports in `GICR_TYPER[63:32]` for a CPU with this
/// MPIDR: Aff3.Aff2.Aff1.Aff0 (IHI 0069 §12.11.35).
pub fn typer_affinity(mpidr: u64) -> u32 {
    ((mpidr & 0xff_ffff) | (mpidr >> 32 & 0xff) << 24) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellvisor_linux::tree::{CellTree, Gic, PsciMethod, Uart};
    use std::vec::Vec;

    /// The tree `cellvisor cell linux` makes for QEMU virt's `linux.toml`.
    fn cell(gic: Gic) -> Vec<u8> {
        CellTree {
            model: "cellvisor cell linux",
            cpus: &[2, 3],
            memory: &[(0x7600_0000, 0x800_0000)],
            gic,
            uart: Some(Uart {
                compatible: &["arm,pl011", "arm,primecell"],
                address: 0x0904_0000,
                size: 0x1000,
                spi: 8,
                clock_names: &["uartclk", "apb_pclk"],
                clock_hz: 24_000_000,
            }),
            psci: PsciMethod::Hvc,
            bootargs: "",
            initrd: None,
        }
        .build()
        .unwrap()
    }

    #[test]
    fn a_generated_cell_tree_names_its_machine() {
        let blob = cell(Gic::V3 {
            distributor: 0x0800_0000,
            redistributors: (0x080e_0000, 0x4_0000),
        });
        let machine = Machine::read(&blob).unwrap();
        assert_eq!(
            machine.gic,
            TreeGic::V3 {
                distributor: 0x0800_0000,
                redistributors: (0x080e_0000, 0x4_0000),
                stride: REDISTRIBUTOR_STRIDE
            }
        );
        assert_eq!(machine.cpus(), &[2, 3]);
        assert_eq!(machine.psci, Some(Conduit::Hvc));
        assert_eq!(machine.memory, Some((0x7600_0000, 0x800_0000)));
        assert_eq!(machine.uart, Some((UART_PL011, 0x0904_0000)));
        assert_eq!(machine.virtual_timer, Some(27));
        assert_eq!(machine.size as usize, blob.len());
        let platform = machine.platform(0x080e_0000);
        assert_eq!(platform.gic_version.get(), GIC_V3);
        assert_eq!(platform.gicr_or_gicc.get(), 0x080e_0000);
        assert_eq!(platform.cpus.get(), 2);
    }

    #[test]
    fn a_gicv2_tree_gives_the_cpu_interface() {
        let blob = cell(Gic::V2 {
            distributor: 0xf901_0000,
            cpu_interface: 0xf902_0000,
        });
        let machine = Machine::read(&blob).unwrap();
        assert_eq!(
            machine.platform(0).gicr_or_gicc.get(),
            0xf902_0000,
            "{machine:?}"
        );
        assert_eq!(machine.platform(0).gic_version.get(), GIC_V2);
    }

    #[test]
    fn what_is_not_a_tree_is_refused() {
        assert_eq!(Machine::read(&[0; 64]), Err(TreeError::NotATree));
        let mut blob = cell(Gic::V2 {
            distributor: 0xf901_0000,
            cpu_interface: 0xf902_0000,
        });
        blob.truncate(blob.len() / 2);
        assert_eq!(Machine::read(&blob), Err(TreeError::Malformed));
        // SAFETY: 0 and a misaligned address are refused before any read.
        assert_eq!(unsafe { Machine::at(0) }, Err(TreeError::NotATree));
        // SAFETY: as above.
        assert_eq!(unsafe { Machine::at(0x1004) }, Err(TreeError::NotATree));
    }

    #[test]
    fn the_redistributor_affinity_packs_aff3_on_top() {
        assert_eq!(typer_affinity(0x0000_0001_8000_0203), 0x0100_0203);
        assert_eq!(typer_affinity(3), 3);
    }
}
