//! Random sequences of creates (some made to fail half way) and destroys of random cell
//! layouts: no physical byte, CPU or interrupt line is ever owned twice, nothing is lost, the
//! fake machine always matches the books, and once every cell is gone the root cell has
//! exactly what it had at boot.

mod common;

use cellvisor_cell::{CellId, CreateError, Region, Registry};
use cellvisor_config::{
    Architecture, Cell, CellConfig, CellConfigView, CpuSet, IrqRange, MemoryFlags, MemoryRegion,
};
use common::{Fake, Machine};
use proptest::prelude::*;

type Reg = Registry<4>;

const PAGE: u64 = 0x1000;
const RAM: MemoryFlags = MemoryFlags::READ
    .union(MemoryFlags::WRITE)
    .union(MemoryFlags::EXECUTE);
const IO: MemoryFlags = MemoryFlags::READ
    .union(MemoryFlags::WRITE)
    .union(MemoryFlags::IO);

/// The root cell's memory: RAM at its physical address, two adjacent RAM regions mapped
/// elsewhere (contiguous in both spaces, same flags: a merging implementation would fuse
/// them), and devices.
fn root_memory() -> [Region; 4] {
    [
        Region::new(0x4000_0000, 0x4000_0000, 0x100 * PAGE, RAM),
        Region::new(0x8000_0000, 0x1000_0000, 0x100 * PAGE, RAM),
        Region::new(0x8010_0000, 0x1010_0000, 0x80 * PAGE, RAM),
        Region::new(0x900_0000, 0x900_0000, 8 * PAGE, IO),
    ]
}

fn boot() -> Reg {
    Registry::new(
        "root",
        0b1111,
        &root_memory(),
        &[IrqRange {
            first: 32,
            count: 32,
        }],
        32,
    )
    .unwrap()
}

/// A region of a random cell: relative to a root region (index 4: nobody's memory), maybe
/// running past its end.
#[derive(Clone, Debug)]
struct RegionSpec {
    root: usize,
    offset: u64,
    pages: u64,
    /// Whether to cut `pages` so that the region ends inside its root region.
    fit: bool,
    shared: bool,
}

#[derive(Clone, Debug)]
struct CellSpec {
    cpus: Vec<u32>,
    irqs: Vec<u32>,
    regions: Vec<RegionSpec>,
    comm: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        spec: CellSpec,
        offline: u64,
        fail_at: Option<usize>,
    },
    Destroy {
        id: u32,
    },
}

fn region_spec() -> impl Strategy<Value = RegionSpec> {
    (
        prop_oneof![9 => 0usize..4, 1 => Just(4)],
        0u64..0x100,
        1u64..0x40,
        proptest::bool::weighted(0.8),
        proptest::bool::weighted(0.3),
    )
        .prop_map(|(root, offset, pages, fit, shared)| RegionSpec {
            root,
            offset,
            pages,
            fit,
            shared,
        })
}

fn cell_spec() -> impl Strategy<Value = CellSpec> {
    (
        proptest::collection::btree_set(prop_oneof![9 => 0u32..4, 1 => Just(4)], 1..3),
        proptest::collection::btree_set(32u32..70, 0..4),
        proptest::collection::vec(region_spec(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(cpus, irqs, regions, comm)| CellSpec {
            cpus: cpus.into_iter().collect(),
            irqs: irqs.into_iter().collect(),
            regions,
            comm,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            cell_spec(),
            prop_oneof![3 => Just(0b1111), 1 => 0u64..16],
            proptest::option::weighted(0.3, 0usize..12),
        )
            .prop_map(
            |(spec, offline, fail_at)| Op::Create { spec, offline, fail_at }
        ),
        2 => (1u32..5).prop_map(|id| Op::Destroy { id }),
    ]
}

/// The configuration of a spec, if it is a valid one.
fn config(name: &str, spec: &CellSpec) -> Option<Vec<u8>> {
    let roots = root_memory();
    let mut cell = Cell::new(name);
    cell.cpus = CpuSet::from_cpus(spec.cpus.iter().copied());
    cell.irqs = spec.irqs.iter().map(|&l| IrqRange::single(l)).collect();
    let mut virt = 0;
    for r in &spec.regions {
        let (base, io, pages) = match roots.get(r.root) {
            Some(root) => (root.phys, root.is_io(), root.size / PAGE),
            None => (0x2000_0000, false, 0x100),
        };
        let offset = r.offset % pages;
        let size = if r.fit {
            r.pages.min(pages - offset)
        } else {
            r.pages
        } * PAGE;
        let mut flags = if io { IO } else { RAM };
        if r.shared {
            flags |= MemoryFlags::ROOTSHARED;
        }
        cell.memory_regions.push(MemoryRegion {
            phys_start: base + offset * PAGE,
            virt_start: virt,
            size,
            flags,
        });
        virt += size;
    }
    if spec.comm {
        cell.memory_regions.push(MemoryRegion {
            phys_start: 0,
            virt_start: 0x1_0000_0000,
            size: PAGE,
            flags: MemoryFlags::READ | MemoryFlags::WRITE | MemoryFlags::COMM_REGION,
        });
    }
    CellConfig {
        architecture: Architecture::Aarch64,
        cell,
    }
    .to_bytes()
    .ok()
}

/// The invariants of the books.
fn check_invariants(registry: &Reg) -> Result<(), TestCaseError> {
    let cells: Vec<_> = registry.iter().collect();
    // CPUs and lines: each owned once, none lost.
    let mut cpus = 0u64;
    for cell in &cells {
        prop_assert_eq!(cpus & cell.cpus, 0, "CPU owned twice");
        cpus |= cell.cpus;
        prop_assert!(cell.cpus != 0, "cell without CPU");
    }
    prop_assert_eq!(cpus, 0b1111);
    let mut lines = 0usize;
    for cell in &cells {
        for line in cell.irqs.iter() {
            prop_assert_eq!(registry.owner_of_irq(line), Some(cell.id));
            lines += 1;
        }
    }
    prop_assert_eq!(lines, 32);

    // No physical byte owned by two cells, unless it is memory shared with the root cell.
    for (i, a) in cells.iter().enumerate() {
        for b in &cells[i + 1..] {
            for ra in a.regions.iter().filter(|r| r.has_phys()) {
                for rb in b.regions.iter().filter(|r| r.has_phys()) {
                    if ra.phys_range().overlaps(&rb.phys_range()) {
                        let shared = (a.is_root() || ra.is_root_shared()) && rb.is_root_shared();
                        prop_assert!(
                            shared,
                            "{} of {} and {} of {} overlap",
                            ra,
                            a.name,
                            rb,
                            b.name
                        );
                    }
                }
            }
        }
    }

    // Nothing lost: the root cell's pieces and the lent regions add up to its boot memory,
    // each lent region inside one boot region.
    let boot: u64 = registry.root_memory().iter().map(|r| r.size).sum();
    let root: u64 = registry.root().regions.iter().map(|r| r.size).sum();
    let mut lent = 0;
    for cell in cells.iter().filter(|c| !c.is_root()) {
        for r in cell.regions.iter().filter(|r| r.has_phys()) {
            prop_assert!(registry
                .root_memory()
                .iter()
                .any(|b| b.phys_range().contains_range(&r.phys_range())));
            if r.is_lent() {
                lent += r.size;
            }
        }
    }
    prop_assert_eq!(root + lent, boot);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_layouts_keep_the_books(ops in proptest::collection::vec(op(), 1..25)) {
        let mut registry = boot();
        let initial = registry.clone();
        let mut fake = Fake::new(&registry);
        let boot_machine = fake.machine.clone();

        for (k, op) in ops.iter().enumerate() {
            let before = registry.clone();
            match op {
                Op::Create { spec, offline, fail_at } => {
                    let Some(bytes) = config(&format!("c{k}"), spec) else { continue };
                    let view = CellConfigView::parse(&bytes).unwrap();
                    if let Some(n) = fail_at {
                        fake.fail_at(*n);
                    }
                    match registry.create(view.cell(), *offline, &mut fake) {
                        Ok(id) => {
                            let cell = registry.cell(id).unwrap();
                            prop_assert_eq!(cell.cpus & !offline, 0);
                        }
                        Err(CreateError::Partition { undo, .. }) => {
                            prop_assert!(undo.is_none());
                            prop_assert_eq!(&registry, &before);
                        }
                        Err(error) => {
                            prop_assert_eq!(&registry, &before, "{}", error);
                        }
                    }
                    fake.fail.clear();
                }
                Op::Destroy { id } => {
                    let result = registry.destroy(CellId(*id), &mut fake);
                    prop_assert_eq!(result.is_ok(), before.cell(CellId(*id)).is_some());
                }
            }
            prop_assert_eq!(&fake.machine, &Machine::of(&registry));
            check_invariants(&registry)?;
        }

        let ids: Vec<CellId> = registry.iter().skip(1).map(|c| c.id).collect();
        for id in ids {
            registry.destroy(id, &mut fake).unwrap();
        }
        prop_assert_eq!(&registry, &initial);
        prop_assert_eq!(registry.root().regions.as_slice(), &root_memory());
        prop_assert_eq!(&fake.machine, &boot_machine);
    }
}
