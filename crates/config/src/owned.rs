//! Owned configurations (feature `alloc`): what the tools build from TOML and turn into the
//! binary format, and what a view converts back into.

use alloc::string::String;
use alloc::vec::Vec;
use core::mem::size_of;

use zerocopy::IntoBytes;

use crate::error::{Element, Error, Problem};
use crate::layout::{self, CellDescriptor, Header, SystemDescriptor};
use crate::types::{
    Architecture, CellFlags, ConfigKind, Console, CpuSet, Frame, HypervisorMemory,
    InterruptController, IoApic, IommuUnit, IrqRange, MemoryRegion, PciDevice, PciHost, PortRange,
    StreamId,
};
use crate::view::{CellConfigView, CellView, SystemConfigView};

/// A cell: the root cell of a system, or the body of a cell configuration.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Cell {
    /// Name: 1 to 31 bytes of `[A-Za-z0-9._-]`.
    pub name: String,
    /// Flags.
    pub flags: CellFlags,
    /// CPUs.
    pub cpus: CpuSet,
    /// Memory regions.
    pub memory_regions: Vec<MemoryRegion>,
    /// Interrupt lines.
    pub irqs: Vec<IrqRange>,
    /// x86 I/O ports.
    pub ports: Vec<PortRange>,
    /// PCI devices.
    pub pci_devices: Vec<PciDevice>,
    /// Arm SMMU stream IDs.
    pub stream_ids: Vec<StreamId>,
    /// The console the cell's software should use.
    pub console: Option<Console>,
    /// Where the cell's CPUs start.
    pub cpu_reset_address: u64,
}

impl Cell {
    /// An empty cell with a name: no CPU, no memory, nothing.
    pub fn new(name: impl Into<String>) -> Self {
        Cell {
            name: name.into(),
            flags: CellFlags::empty(),
            cpus: CpuSet::new(),
            memory_regions: Vec::new(),
            irqs: Vec::new(),
            ports: Vec::new(),
            pci_devices: Vec::new(),
            stream_ids: Vec::new(),
            console: None,
            cpu_reset_address: 0,
        }
    }

    /// A copy of a view.
    pub fn from_view(view: &CellView<'_>) -> Self {
        Cell {
            name: view.name().into(),
            flags: view.flags(),
            cpus: view.cpus(),
            memory_regions: view.memory_regions().collect(),
            irqs: view.irq_ranges().collect(),
            ports: view.port_ranges().collect(),
            pci_devices: view.pci_devices().collect(),
            stream_ids: view.stream_ids().collect(),
            console: view.console(),
            cpu_reset_address: view.cpu_reset_address(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let name = self.name.as_bytes();
        if name.len() > crate::limits::MAX_NAME_LEN {
            return Err(Error::new(
                Element::Name,
                Problem::NameTooLong { len: name.len() },
            ));
        }
        let mut name_field = [0; 32];
        name_field[..name.len()].copy_from_slice(name);
        let words = &self.cpus.words()[..self.cpus.used_words()];
        let count = |n: usize| (n.min(u32::MAX as usize) as u32).into();
        let desc = CellDescriptor {
            name: name_field,
            flags: self.flags.bits().into(),
            cpu_set_words: count(words.len()),
            memory_region_count: count(self.memory_regions.len()),
            irq_range_count: count(self.irqs.len()),
            port_range_count: count(self.ports.len()),
            pci_device_count: count(self.pci_devices.len()),
            stream_id_count: count(self.stream_ids.len()),
            reserved: 0.into(),
            cpu_reset_address: self.cpu_reset_address.into(),
            console: Console::to_entry(self.console.as_ref()),
        };
        out.extend_from_slice(desc.as_bytes());
        for word in words {
            out.extend_from_slice(&word.to_le_bytes());
        }
        for region in &self.memory_regions {
            out.extend_from_slice(region.to_entry().as_bytes());
        }
        for range in &self.irqs {
            let entry = layout::IrqRangeEntry {
                first: range.first.into(),
                count: range.count.into(),
            };
            out.extend_from_slice(entry.as_bytes());
        }
        for range in &self.ports {
            let entry = layout::PortRangeEntry {
                base: range.base.into(),
                size: range.size.into(),
            };
            out.extend_from_slice(entry.as_bytes());
        }
        for device in &self.pci_devices {
            let entry = layout::PciDeviceEntry {
                domain: device.domain.into(),
                bdf: device.bdf.0.into(),
                kind: device.kind.to_raw(),
                iommu: device.iommu.unwrap_or(layout::NO_IOMMU),
                reserved: 0.into(),
            };
            out.extend_from_slice(entry.as_bytes());
        }
        for id in &self.stream_ids {
            let entry = layout::StreamIdEntry {
                id: id.id.into(),
                mask: id.mask.into(),
            };
            out.extend_from_slice(entry.as_bytes());
        }
        Ok(())
    }
}

/// A cell configuration.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CellConfig {
    /// Architecture (must match the system's).
    pub architecture: Architecture,
    /// The cell.
    pub cell: Cell,
}

impl CellConfig {
    /// A copy of a view.
    pub fn from_view(view: &CellConfigView<'_>) -> Self {
        CellConfig {
            architecture: view.architecture(),
            cell: Cell::from_view(view.cell()),
        }
    }

    /// Reads and validates a binary cell configuration into an owned one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        CellConfigView::parse(bytes).map(|view| Self::from_view(&view))
    }

    /// The binary form, without validating it. Fails only if the name does not fit.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        out.extend_from_slice(&[0; size_of::<Header>()]);
        self.cell.encode(&mut out)?;
        finish(&mut out, ConfigKind::Cell, self.architecture);
        Ok(out)
    }

    /// The binary form, validated: the first problem is the error.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let bytes = self.encode()?;
        CellConfigView::parse(&bytes)?;
        Ok(bytes)
    }
}

/// A system configuration.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SystemConfig {
    /// Architecture.
    pub architecture: Architecture,
    /// The hypervisor's memory.
    pub hypervisor_memory: HypervisorMemory,
    /// The hypervisor's console.
    pub debug_console: Option<Console>,
    /// The interrupt controller.
    pub interrupt_controller: InterruptController,
    /// x86 IOAPICs.
    pub ioapics: Vec<IoApic>,
    /// IOMMU units.
    pub iommu_units: Vec<IommuUnit>,
    /// The PCI host bridge.
    pub pci: Option<PciHost>,
    /// The root cell: everything not given to the hypervisor, at boot.
    pub root_cell: Cell,
}

impl SystemConfig {
    /// A copy of a view.
    pub fn from_view(view: &SystemConfigView<'_>) -> Self {
        SystemConfig {
            architecture: view.architecture(),
            hypervisor_memory: view.hypervisor_memory(),
            debug_console: view.debug_console(),
            interrupt_controller: view.interrupt_controller(),
            ioapics: view.ioapics().collect(),
            iommu_units: view.iommu_units().collect(),
            pci: view.pci_host(),
            root_cell: Cell::from_view(view.root_cell()),
        }
    }

    /// Reads and validates a binary system configuration into an owned one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        SystemConfigView::parse(bytes).map(|view| Self::from_view(&view))
    }

    /// The binary form, without validating it. Fails only if the root cell's name does not
    /// fit.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        out.extend_from_slice(&[0; size_of::<Header>()]);
        let (kind, maintenance_irq, frames) = match self.interrupt_controller {
            InterruptController::Gic(gic) => (
                match gic.version {
                    crate::GicVersion::V2 => layout::IRQCHIP_GICV2,
                    crate::GicVersion::V3 => layout::IRQCHIP_GICV3,
                },
                gic.maintenance_irq,
                [
                    Frame::to_entry(Some(gic.distributor)),
                    Frame::to_entry(gic.cpu_interface),
                    Frame::to_entry(gic.hypervisor_interface),
                    Frame::to_entry(gic.virtual_cpu_interface),
                    Frame::to_entry(gic.redistributors),
                ],
            ),
            InterruptController::Apic { local_apic } => (
                layout::IRQCHIP_APIC,
                0,
                [
                    Frame::to_entry(Some(local_apic)),
                    Frame::to_entry(None),
                    Frame::to_entry(None),
                    Frame::to_entry(None),
                    Frame::to_entry(None),
                ],
            ),
        };
        let pci = self.pci.unwrap_or(PciHost {
            ecam_base: 0,
            end_bus: 0,
            domain: 0,
        });
        let count = |n: usize| (n.min(u32::MAX as usize) as u32).into();
        let desc = SystemDescriptor {
            hypervisor_memory: layout::FrameEntry {
                base: self.hypervisor_memory.start.into(),
                size: self.hypervisor_memory.size.into(),
            },
            debug_console: Console::to_entry(self.debug_console.as_ref()),
            reserved: 0.into(),
            iommu_unit_count: count(self.iommu_units.len()),
            ioapic_count: count(self.ioapics.len()),
            reserved2: 0.into(),
            pci: layout::PciHostEntry {
                ecam_base: pci.ecam_base.into(),
                domain: pci.domain.into(),
                end_bus: pci.end_bus,
                reserved: [0; 5],
            },
            interrupt_controller: layout::InterruptControllerEntry {
                kind: kind.into(),
                maintenance_irq: maintenance_irq.into(),
                frames,
            },
        };
        out.extend_from_slice(desc.as_bytes());
        for unit in &self.iommu_units {
            out.extend_from_slice(unit.to_entry().as_bytes());
        }
        for ioapic in &self.ioapics {
            out.extend_from_slice(ioapic.to_entry().as_bytes());
        }
        self.root_cell
            .encode(&mut out)
            .map_err(|e| e.in_scope(crate::Scope::RootCell))?;
        finish(&mut out, ConfigKind::System, self.architecture);
        Ok(out)
    }

    /// The binary form, validated: the first problem is the error.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let bytes = self.encode()?;
        SystemConfigView::parse(&bytes)?;
        Ok(bytes)
    }
}

/// Writes the header in front of an encoded body.
fn finish(out: &mut [u8], kind: ConfigKind, architecture: Architecture) {
    let sealed = layout::seal(out, kind.to_raw(), architecture.to_raw());
    debug_assert!(sealed, "every encoding starts with room for its header");
}
