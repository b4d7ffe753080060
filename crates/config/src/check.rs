//! Cross-checks: cells against the system's hardware description, against the root cell
//! (which lends them its resources) and against each other.
//!
//! The hypervisor runs [`check_new_cell`] when a cell is created; the tools run
//! [`check_cells`] on a system configuration and all its cells.

use core::ops::ControlFlow;

use crate::cover::first_uncovered;
use crate::error::{Element, Error, Owner, Problem, Scope};
use crate::types::{CpuSet, IrqRange, MemoryFlags, MemoryRegion};
use crate::view::{check_cell_hardware, CellConfigView, Report, SystemConfigView};

/// Checks one cell against the system's hardware, the root cell's resources and the cells
/// created before it (`earlier`). The configurations must have been validated.
pub fn check_cell(
    system: &SystemConfigView<'_>,
    earlier: &[CellConfigView<'_>],
    config: &CellConfigView<'_>,
    report: Report<'_>,
) -> ControlFlow<()> {
    let root = system.root_cell();
    let cell = config.cell();
    let scope = Scope::Cell(cell.cell_name());
    if config.architecture() != system.architecture() {
        return report(
            Error::new(
                Element::Architecture,
                Problem::ArchitectureMismatch {
                    cell: config.architecture(),
                    system: system.architecture(),
                },
            )
            .in_scope(scope),
        );
    }
    check_cell_hardware(system, cell, scope, report)?;
    let mut report = |element, problem| report(Error::new(element, problem).in_scope(scope));
    let owner = |c: &CellConfigView<'_>| Owner::Cell(c.cell().cell_name());

    if cell.name() == root.name() {
        report(Element::Name, Problem::NameOfRootCell)?;
    } else if earlier.iter().any(|c| c.cell().name() == cell.name()) {
        report(Element::Name, Problem::DuplicateName)?;
    }

    let root_cpus = root.cpus();
    for cpu in cell.cpus().iter() {
        if !root_cpus.contains(cpu) {
            report(Element::Cpus, Problem::CpuNotInRootCell { cpu })?;
        } else if let Some(other) = earlier.iter().find(|c| c.cell().cpus().contains(cpu)) {
            report(
                Element::Cpus,
                Problem::CpuTaken {
                    cpu,
                    by: owner(other),
                },
            )?;
        }
    }

    let owned = |r: &MemoryRegion| !r.flags.contains(MemoryFlags::COMM_REGION) && r.size != 0;
    let root_memory = root
        .memory_regions()
        .filter(owned)
        .map(|r| (r.phys_start, r.phys().end().min(u64::MAX.into()) as u64));
    for (i, region) in cell.memory_regions().enumerate() {
        if !owned(&region) {
            continue;
        }
        let element = Element::MemoryRegion(i as u32);
        let range = region.phys();
        let end = range.end().min(u64::MAX.into()) as u64;
        if let Some(address) = first_uncovered(range.start, end, root_memory.clone()) {
            report(element, Problem::MemoryNotInRootCell { range, address })?;
        }
        let shared = region.flags.contains(MemoryFlags::ROOTSHARED);
        'cells: for other in earlier {
            for (j, theirs) in other.cell().memory_regions().enumerate() {
                let both_shared = shared && theirs.flags.contains(MemoryFlags::ROOTSHARED);
                if owned(&theirs) && !both_shared && theirs.phys().overlaps(&range) {
                    report(
                        element,
                        Problem::MemoryTaken {
                            range,
                            by: owner(other),
                            region: j as u32,
                        },
                    )?;
                    break 'cells;
                }
            }
        }
    }

    let root_irqs = root.irq_ranges().map(irq_bounds);
    for (i, range) in cell.irq_ranges().enumerate() {
        let element = Element::IrqRange(i as u32);
        let (start, end) = irq_bounds(range);
        if let Some(line) = first_uncovered(start, end, root_irqs.clone()) {
            report(element, Problem::IrqNotInRootCell { line: line as u32 })?;
        }
        let taken = earlier.iter().find_map(|c| {
            c.cell()
                .irq_ranges()
                .find(|r| r.overlaps(&range))
                .map(|r| (c, r.first.max(range.first)))
        });
        if let Some((other, line)) = taken {
            report(
                element,
                Problem::IrqTaken {
                    line,
                    by: owner(other),
                },
            )?;
        }
    }

    let root_ports = root
        .port_ranges()
        .map(|r| (u64::from(r.base), u64::from(r.base) + u64::from(r.size)));
    for (i, range) in cell.port_ranges().enumerate() {
        let element = Element::PortRange(i as u32);
        let start = u64::from(range.base);
        if first_uncovered(start, start + u64::from(range.size), root_ports.clone()).is_some() {
            report(element, Problem::PortNotInRootCell { range })?;
        }
        if let Some(other) = earlier
            .iter()
            .find(|c| c.cell().port_ranges().any(|r| r.overlaps(&range)))
        {
            report(
                element,
                Problem::PortTaken {
                    range,
                    by: owner(other),
                },
            )?;
        }
    }

    for (i, device) in cell.pci_devices().enumerate() {
        let element = Element::PciDevice(i as u32);
        let address = device.address();
        if !root.pci_devices().any(|d| d.address() == address) {
            report(element, Problem::PciNotInRootCell { address })?;
        }
        if let Some(other) = earlier
            .iter()
            .find(|c| c.cell().pci_devices().any(|d| d.address() == address))
        {
            report(
                element,
                Problem::PciTaken {
                    address,
                    by: owner(other),
                },
            )?;
        }
    }

    for (i, id) in cell.stream_ids().enumerate() {
        let element = Element::StreamId(i as u32);
        if !root.stream_ids().any(|r| r.covers(&id)) {
            report(element, Problem::StreamIdNotInRootCell { id })?;
        }
        if let Some(other) = earlier
            .iter()
            .find(|c| c.cell().stream_ids().any(|s| s.overlaps(&id)))
        {
            report(
                element,
                Problem::StreamIdTaken {
                    id,
                    by: owner(other),
                },
            )?;
        }
    }
    ControlFlow::Continue(())
}

fn irq_bounds(range: IrqRange) -> (u64, u64) {
    (
        u64::from(range.first),
        u64::from(range.first) + u64::from(range.count),
    )
}

/// Checks that the cells (given by their CPU sets) leave the root cell at least one CPU.
pub fn check_root_keeps_a_cpu(
    system: &SystemConfigView<'_>,
    cells: impl Iterator<Item = CpuSet>,
    report: Report<'_>,
) -> ControlFlow<()> {
    let root_cpus = system.root_cell().cpus();
    let taken = cells
        .fold(CpuSet::new(), |set, cpus| set.union(&cpus))
        .intersection(&root_cpus);
    if !root_cpus.is_empty() && root_cpus.difference(&taken).is_empty() {
        report(
            Error::new(Element::Cpus, Problem::RootCellWithoutCpu { taken })
                .in_scope(Scope::RootCell),
        )?;
    }
    ControlFlow::Continue(())
}

/// Checks cells against a system configuration and each other: every cell against the
/// hardware description, the root cell's resources and the cells before it in `cells`, then
/// that the root cell keeps a CPU.
///
/// The configurations themselves must have been validated ([`SystemConfigView::parse`],
/// [`CellConfigView::parse`]).
pub fn check_cells(
    system: &SystemConfigView<'_>,
    cells: &[CellConfigView<'_>],
    report: Report<'_>,
) -> ControlFlow<()> {
    for (k, cell) in cells.iter().enumerate() {
        check_cell(system, &cells[..k], cell, report)?;
    }
    check_root_keeps_a_cpu(system, cells.iter().map(|c| c.cell().cpus()), report)
}

/// Checks a cell about to be created against the system and the cells that exist: what the
/// hypervisor runs on `cell create`. The first problem is the error.
pub fn check_new_cell(
    system: &SystemConfigView<'_>,
    existing: &[CellConfigView<'_>],
    new: &CellConfigView<'_>,
) -> Result<(), Error> {
    let mut first = None;
    let mut report = |e| {
        first = Some(e);
        ControlFlow::Break(())
    };
    if check_cell(system, existing, new, &mut report).is_continue() {
        let cpus = existing.iter().chain([new]).map(|c| c.cell().cpus());
        let _ = check_root_keeps_a_cpu(system, cpus, &mut report);
    }
    match first {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
