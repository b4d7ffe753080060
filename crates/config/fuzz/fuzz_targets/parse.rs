//! The binary parser on arbitrary bytes: as a system and as a cell configuration, first as
//! given, then with the header repaired (magic, revision, total size, checksum) so that the
//! fuzzer reaches the descriptors and elements behind the CRC.
//!
//! Checked on every input: no panic; `parse` and `parse_reporting` agree (same first error,
//! success exactly when no problem is reported); whatever parses re-encodes to the same
//! bytes (the encoding is canonical) and passes the cross-checks without panicking.

#![no_main]

use std::ops::ControlFlow;

use std::sync::OnceLock;

use cellvisor_config::{
    check_cells, check_new_cell, layout, Architecture, Bdf, Cell, CellConfig, CellConfigView,
    CpuSet, Error, Frame, Gic, GicVersion, HypervisorMemory, InterruptController, IommuKind,
    IommuUnit, IrqRange, MemoryFlags, MemoryRegion, StreamId, SystemConfig, SystemConfigView,
};
use libfuzzer_sys::fuzz_target;

/// Runs `parse` and `parse_reporting` and checks that they agree.
fn agree<T>(
    parse: Result<T, Error>,
    reporting: impl FnOnce(&mut dyn FnMut(Error) -> ControlFlow<()>) -> Option<T>,
) -> Option<T> {
    let mut problems = Vec::new();
    let all = reporting(&mut |e| {
        problems.push(e);
        ControlFlow::Continue(())
    });
    match &parse {
        Ok(_) => assert!(problems.is_empty() && all.is_some()),
        Err(first) => {
            assert!(all.is_none());
            assert_eq!(problems.first(), Some(first));
        }
    }
    parse.ok()
}

fn exercise(bytes: &[u8]) {
    let system = agree(SystemConfigView::parse(bytes), |r| {
        SystemConfigView::parse_reporting(bytes, r)
    });
    if let Some(view) = &system {
        let owned = SystemConfig::from_view(view);
        assert_eq!(owned.encode().unwrap(), bytes);
        // The system alone through the cross-checks (the root cell keeps a CPU).
        let _ = check_cells(view, &[], &mut |_| ControlFlow::Continue(()));
    }
    let cell = agree(CellConfigView::parse(bytes), |r| {
        CellConfigView::parse_reporting(bytes, r)
    });
    if let Some(view) = &cell {
        let owned = CellConfig::from_view(view);
        assert_eq!(owned.encode().unwrap(), bytes);
    }
}

/// The input with a valid header for its own contents; byte 6 (kind) and 7 (architecture)
/// are kept, so both kinds and both architectures are reached.
fn repaired(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 16 {
        return None;
    }
    let mut bytes = data.to_vec();
    let (kind, architecture) = (1 + bytes[6] % 2, 1 + bytes[7] % 2);
    layout::seal(&mut bytes, kind, architecture);
    Some(bytes)
}

/// An aarch64 system with a GICv3, an SMMUv3, RAM at 0x4000_0000 and a device page.
fn system() -> &'static [u8] {
    static SYSTEM: OnceLock<Vec<u8>> = OnceLock::new();
    SYSTEM.get_or_init(|| {
        let ram = MemoryFlags::READ | MemoryFlags::WRITE | MemoryFlags::EXECUTE | MemoryFlags::DMA;
        let mut root = Cell::new("root");
        root.cpus = CpuSet::from_cpus(0..4);
        root.memory_regions = vec![
            MemoryRegion {
                phys_start: 0x4000_0000,
                virt_start: 0x4000_0000,
                size: 0x20_0000,
                flags: ram,
            },
            MemoryRegion {
                phys_start: 0x40a0_0000,
                virt_start: 0x40a0_0000,
                size: 0x3f60_0000,
                flags: ram,
            },
            MemoryRegion {
                phys_start: 0x904_0000,
                virt_start: 0x904_0000,
                size: 0x1000,
                flags: MemoryFlags::READ | MemoryFlags::WRITE | MemoryFlags::IO,
            },
        ];
        root.irqs = vec![IrqRange {
            first: 32,
            count: 256,
        }];
        root.stream_ids = vec![StreamId { id: 0, mask: 0 }, StreamId { id: 0x10, mask: 0 }];
        let config = SystemConfig {
            architecture: Architecture::Aarch64,
            hypervisor_memory: HypervisorMemory {
                start: 0x4020_0000,
                size: 0x80_0000,
            },
            debug_console: None,
            interrupt_controller: InterruptController::Gic(Gic {
                version: GicVersion::V3,
                maintenance_irq: 25,
                distributor: Frame {
                    base: 0x800_0000,
                    size: 0x1_0000,
                },
                cpu_interface: None,
                hypervisor_interface: None,
                virtual_cpu_interface: None,
                redistributors: Some(Frame {
                    base: 0x80a_0000,
                    size: 0x8_0000,
                }),
            }),
            ioapics: Vec::new(),
            iommu_units: vec![IommuUnit {
                kind: IommuKind::SmmuV3,
                base: 0x905_0000,
                size: 0x2_0000,
                amd_bdf: Bdf(0),
                amd_base_cap: 0,
                amd_msi_cap: 0,
                amd_features: 0,
            }],
            pci: None,
            root_cell: root,
        };
        config.to_bytes().unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if let Some(bytes) = repaired(data) {
        exercise(&bytes);
        // Valid cells against a fixed system: the cross-checks on arbitrary cells.
        if let Ok(cell) = CellConfigView::parse(&bytes) {
            let system = system();
            let system = SystemConfigView::parse(system).unwrap();
            let _ = check_cells(&system, &[cell], &mut |_| ControlFlow::Continue(()));
            let _ = check_cells(&system, &[cell, cell], &mut |_| ControlFlow::Continue(()));
            let _ = check_new_cell(&system, &[cell], &cell);
        }
    }
});
