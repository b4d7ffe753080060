//! The registry of cells: who owns which CPU, memory range and interrupt line.

use cellvisor_abi::{CellRecord, CellState};
use cellvisor_config::{
    AddressRange, Architecture, CellName, CellView, IrqRange, MemoryFlags, PciAddress, PortRange,
    SystemConfigView,
};

use crate::error::{CreateError, DestroyError, LoadError, Problem, RootError, StateError};
use crate::id::CellId;
use crate::partition::{Failure, Partition, Step};
use crate::region::{self, Region, Regions, MAX_REGIONS};
use crate::IrqSet;

/// A cell and what it owns.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Cell {
    /// Id.
    pub id: CellId,
    /// Name.
    pub name: CellName,
    /// State (the root cell is always [`CellState::Running`]).
    pub state: CellState,
    /// CPUs: bit n is hypervisor CPU n.
    pub cpus: u64,
    /// Memory regions: for a cell, those of its configuration, in order (the communication
    /// region included); for the root cell, what remains of its boot-time regions.
    pub regions: Regions,
    /// Shared interrupt lines (SPIs on Arm): per-CPU lines are every cell's and not listed.
    pub irqs: IrqSet,
    /// I/O port ranges (x86).
    pub ports: Ports,
    /// PCI functions (none for the root cell, which has every function no other cell has).
    pub pci: PciFunctions,
    /// Where the cell's CPUs start (guest-physical).
    pub reset_address: u64,
}

impl Cell {
    /// Whether this is the root cell.
    pub const fn is_root(&self) -> bool {
        self.id.is_root()
    }

    /// The communication region (guest-physical address; the hypervisor backs it).
    pub fn comm_region(&self) -> Option<Region> {
        self.regions.iter().copied().find(Region::is_comm_region)
    }

    /// Bytes of RAM the cell has: its regions but device memory and the communication
    /// region (memory shared with the root cell counts for both).
    pub fn memory(&self) -> u64 {
        self.regions
            .iter()
            .filter(|r| r.has_phys() && !r.is_io())
            .map(|r| r.size)
            .sum()
    }

    /// The cell as [`Command::CellList`](cellvisor_abi::Command::CellList) reports it.
    pub fn record(&self) -> CellRecord {
        CellRecord {
            id: self.id.0.into(),
            state: (self.state as u32).into(),
            cpus: self.cpus.into(),
            memory: self.memory().into(),
            name: CellRecord::name_field(self.name.as_str()),
        }
    }

    /// The cell's CPUs, in ascending order.
    pub fn cpu_list(&self) -> impl DoubleEndedIterator<Item = u32> + Clone {
        cpus_of(self.cpus)
    }
}

/// The CPUs of a mask, in ascending order.
fn cpus_of(mask: u64) -> impl DoubleEndedIterator<Item = u32> + Clone {
    (0..64).filter(move |cpu| mask & (1 << cpu) != 0)
}

/// The first interrupt line that is not per-CPU (GIC: SPIs start at INTID 32, Arm GIC
/// architecture specification, 2.2; x86: every GSI is shared).
pub const fn first_shared_irq(architecture: Architecture) -> u32 {
    match architecture {
        Architecture::Aarch64 => 32,
        Architecture::X86_64 => 0,
    }
}

/// I/O port ranges a cell may have.
pub const MAX_PORT_RANGES: usize = 16;

/// A cell's I/O port ranges.
pub type Ports = heapless::Vec<PortRange, MAX_PORT_RANGES>;

/// PCI functions a cell may have.
pub const MAX_PCI_FUNCTIONS: usize = 16;

/// A cell's PCI functions.
pub type PciFunctions = heapless::Vec<PciAddress, MAX_PCI_FUNCTIONS>;

/// The cells of a machine and what each owns, with Jailhouse semantics: at boot the root
/// cell owns every CPU, memory region and interrupt line it is given; [`create`] moves
/// resources from it to a new cell, [`destroy`] gives them all back.
///
/// Fixed capacity (`CELLS` cells, the root cell included), no allocation. The registry keeps
/// the books; a [`Partition`] changes the machine to match.
///
/// [`create`]: Registry::create
/// [`destroy`]: Registry::destroy
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Registry<const CELLS: usize> {
    /// Slot n holds the cell with id n; slot 0 the root cell.
    slots: [Option<Cell>; CELLS],
    /// The root cell's regions at boot: its current ones are these minus what cells took.
    root_memory: Regions,
    /// Every CPU.
    all_cpus: u64,
    /// Lines below this one are per-CPU: never moved, never listed.
    first_shared_irq: u32,
}

/// A checked cell, not yet created.
struct Pending {
    cell: Cell,
    root_regions: Regions,
}

impl<const CELLS: usize> Registry<CELLS> {
    /// A registry whose root cell owns `root_cpus` (bit n: hypervisor CPU n; these are every
    /// CPU of the machine), `root_regions` and the lines of `root_irqs` from
    /// `first_shared_irq` on (lines below it are per-CPU, see [`first_shared_irq`]).
    pub fn new(
        root_name: &str,
        root_cpus: u64,
        root_regions: &[Region],
        root_irqs: &[IrqRange],
        first_shared_irq: u32,
    ) -> Result<Self, RootError> {
        Self::build(
            root_name,
            root_cpus,
            root_regions,
            root_irqs.iter().copied(),
            core::iter::empty(),
            first_shared_irq,
        )
    }

    /// A registry for a system configuration: its root cell owns every CPU, memory region
    /// and interrupt line the configuration gives it.
    pub fn from_system(system: &SystemConfigView<'_>) -> Result<Self, RootError> {
        let root = system.root_cell();
        let mut cpus = 0u64;
        for cpu in root.cpus().iter() {
            if cpu >= 64 {
                return Err(RootError::CpuBeyondLimit { cpu });
            }
            cpus |= 1 << cpu;
        }
        let count = root.memory_regions().len();
        if count > MAX_REGIONS {
            return Err(RootError::TooManyRegions { count });
        }
        let mut regions = Regions::new();
        for region in root.memory_regions() {
            regions
                .push(region.into())
                .map_err(|_| RootError::TooManyRegions { count })?;
        }
        if root.port_ranges().len() > MAX_PORT_RANGES {
            return Err(RootError::TooManyPortRanges {
                count: root.port_ranges().len(),
            });
        }
        Self::build(
            root.name(),
            cpus,
            &regions,
            root.irq_ranges(),
            root.port_ranges(),
            first_shared_irq(system.architecture()),
        )
    }

    fn build(
        root_name: &str,
        root_cpus: u64,
        root_regions: &[Region],
        root_irqs: impl Iterator<Item = IrqRange>,
        root_ports: impl Iterator<Item = PortRange>,
        first_shared_irq: u32,
    ) -> Result<Self, RootError> {
        const { assert!(CELLS >= 1, "a registry holds the root cell at least") };
        let name = CellName::new(root_name).ok_or(RootError::BadName)?;
        if root_cpus == 0 {
            return Err(RootError::NoCpu);
        }
        let regions = Regions::from_slice(root_regions).map_err(|_| RootError::TooManyRegions {
            count: root_regions.len(),
        })?;
        for (i, region) in regions.iter().enumerate() {
            let wraps = region.phys.checked_add(region.size).is_none()
                || region.virt.checked_add(region.size).is_none();
            if region.size == 0 || wraps || region.is_comm_region() {
                return Err(RootError::BadRegion { region: i });
            }
            if let Some(other) = regions[..i]
                .iter()
                .position(|r| r.phys_range().overlaps(&region.phys_range()))
            {
                return Err(RootError::MemoryOverlap { region: i, other });
            }
        }
        let mut irqs = IrqSet::new();
        for range in root_irqs {
            let end = u64::from(range.first) + u64::from(range.count);
            // Fails at line `IrqSet::LINES` at the latest: a huge range costs little.
            for line in u64::from(range.first.max(first_shared_irq))..end {
                if !irqs.insert(line as u32) {
                    return Err(RootError::IrqBeyondLimit { line: line as u32 });
                }
            }
        }
        let mut slots = core::array::from_fn(|_| None);
        slots[0] = Some(Cell {
            id: CellId::ROOT,
            name,
            state: CellState::Running,
            cpus: root_cpus,
            regions: regions.clone(),
            irqs,
            ports: root_ports.take(MAX_PORT_RANGES).collect(),
            pci: PciFunctions::new(),
            reset_address: 0,
        });
        Ok(Registry {
            slots,
            root_memory: regions,
            all_cpus: root_cpus,
            first_shared_irq,
        })
    }

    /// Cells the registry can hold, the root cell included.
    pub const fn capacity(&self) -> usize {
        CELLS
    }

    /// Every CPU of the machine.
    pub const fn all_cpus(&self) -> u64 {
        self.all_cpus
    }

    /// The root cell's memory regions at boot (what it has again once every cell is gone).
    pub fn root_memory(&self) -> &[Region] {
        &self.root_memory
    }

    /// The root cell.
    pub fn root(&self) -> &Cell {
        // Slot 0 is filled by `new` and never emptied.
        self.slots[0]
            .as_ref()
            .expect("the root cell's slot is never empty")
    }

    fn root_mut(&mut self) -> &mut Cell {
        self.slots[0]
            .as_mut()
            .expect("the root cell's slot is never empty")
    }

    /// The cell with this id.
    pub fn cell(&self, id: CellId) -> Option<&Cell> {
        self.slots.get(id.0 as usize)?.as_ref()
    }

    /// The id of the cell with this name.
    pub fn by_name(&self, name: &str) -> Option<CellId> {
        self.iter()
            .find(|cell| cell.name.as_str() == name)
            .map(|cell| cell.id)
    }

    /// The cells, root cell first, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Cell> + Clone {
        self.slots.iter().flatten()
    }

    /// The cells but the root cell.
    fn others(&self) -> impl Iterator<Item = &Cell> + Clone {
        self.iter().filter(|cell| !cell.is_root())
    }

    /// The cell that owns a CPU.
    pub fn owner_of_cpu(&self, cpu: u32) -> Option<CellId> {
        let bit = 1u64.checked_shl(cpu)?;
        self.iter()
            .find(|cell| cell.cpus & bit != 0)
            .map(|cell| cell.id)
    }

    /// The cell that owns a shared interrupt line.
    pub fn owner_of_irq(&self, irq: u32) -> Option<CellId> {
        self.iter()
            .find(|cell| cell.irqs.contains(irq))
            .map(|cell| cell.id)
    }

    /// The cell that has a physical address, and its region. Memory a cell shares with the
    /// root cell is reported as the cell's (the first such cell's, by id).
    pub fn owner_of_address(&self, phys: u64) -> Option<(CellId, &Region)> {
        self.others().chain([self.root()]).find_map(|cell| {
            cell.regions
                .iter()
                .find(|r| r.contains_phys(phys))
                .map(|r| (cell.id, r))
        })
    }

    /// The communication region of a cell.
    pub fn comm_region(&self, id: CellId) -> Option<Region> {
        self.cell(id)?.comm_region()
    }

    /// The [`CellRecord`] of a cell.
    pub fn record(&self, id: CellId) -> Option<CellRecord> {
        self.cell(id).map(Cell::record)
    }

    /// Creates a cell from its configuration: checks that everything it asks for is the
    /// root cell's to give, then has `partition` move it, undoing every step if one fails.
    ///
    /// `offline_cpus` are the CPUs the root cell has taken offline (PSCI `CPU_OFF`); every
    /// CPU of the new cell must be one of them. The configuration must have been validated
    /// ([`CellConfigView::parse`](cellvisor_config::CellConfigView::parse)); hardware checks
    /// (no mapping of the interrupt controller, ...) are
    /// [`cellvisor_config::check::check_cell`]'s.
    ///
    /// The checks, in order: the name (valid, unique), a free slot, no stream IDs (not
    /// handed out yet), the CPUs (exist, the root cell's, offline, the
    /// root cell keeps one), each memory region (not overlapping another of the cell or
    /// another cell's, unless both are shared with the root cell; inside one region of the
    /// root cell), each interrupt line (below [`IrqSet::LINES`], the root cell's), and that
    /// the root cell's memory does not split into more than [`MAX_REGIONS`] pieces, each I/O
    /// port range (the root cell's, no other cell's), each PCI function (segment 0, no
    /// other cell's; the root cell has every function no other cell has).
    pub fn create<P: Partition>(
        &mut self,
        config: &CellView<'_>,
        offline_cpus: u64,
        partition: &mut P,
    ) -> Result<CellId, CreateError<P::Error>> {
        let label = CellName::new(config.name()).unwrap_or(CellName::INVALID);
        let Pending { cell, root_regions } =
            self.check(config, offline_cpus)
                .map_err(|problem| CreateError::Rejected {
                    cell: label,
                    problem,
                })?;

        if let Err((failed, undo)) = apply(partition, &self.root_memory, &cell) {
            return Err(CreateError::Partition {
                cell: label,
                failed,
                undo,
            });
        }

        let id = cell.id;
        let root = self.root_mut();
        root.cpus &= !cell.cpus;
        root.irqs = root.irqs.difference(&cell.irqs);
        root.regions = root_regions;
        self.slots[id.0 as usize] = Some(cell);
        Ok(id)
    }

    /// Everything `create` checks; nothing changes.
    fn check(&self, config: &CellView<'_>, offline_cpus: u64) -> Result<Pending, Problem> {
        let name = CellName::new(config.name()).ok_or(Problem::BadName)?;
        if self.by_name(name.as_str()).is_some() {
            return Err(Problem::NameTaken);
        }
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(Problem::NoFreeSlot { capacity: CELLS })?;
        if config.stream_ids().len() != 0 {
            return Err(Problem::Unsupported { what: "stream IDs" });
        }

        let root = self.root();
        let mut cpus = 0u64;
        for cpu in config.cpus().iter() {
            let bit = 1u64.checked_shl(cpu).unwrap_or(0);
            if bit & self.all_cpus == 0 {
                return Err(Problem::CpuMissing { cpu });
            }
            if let Some(other) = self.others().find(|c| c.cpus & bit != 0) {
                return Err(Problem::CpuTaken {
                    cpu,
                    by: other.name,
                });
            }
            if offline_cpus & bit == 0 {
                return Err(Problem::CpuOnline { cpu });
            }
            cpus |= bit;
        }
        if cpus == 0 {
            return Err(Problem::NoCpu);
        }
        if root.cpus & !cpus == 0 {
            return Err(Problem::RootKeepsNoCpu);
        }

        let count = config.memory_regions().len();
        if count > MAX_REGIONS {
            return Err(Problem::TooManyRegions { count });
        }
        let mut regions = Regions::new();
        for (i, region) in config.memory_regions().map(Region::from).enumerate() {
            if region.has_phys() {
                self.check_region(&regions, i, &region)?;
            }
            regions
                .push(region)
                .map_err(|_| Problem::TooManyRegions { count })?;
        }

        let mut irqs = IrqSet::new();
        for (index, range) in config.irq_ranges().enumerate() {
            let start = range.first.max(self.first_shared_irq);
            let end = u64::from(range.first) + u64::from(range.count);
            for line in start..end.min(u64::from(IrqSet::LINES)) as u32 {
                if let Some(other) = self.others().find(|c| c.irqs.contains(line)) {
                    return Err(Problem::IrqTaken {
                        index,
                        range,
                        line,
                        by: other.name,
                    });
                }
                if !root.irqs.contains(line) {
                    return Err(Problem::IrqNotOwned { index, range, line });
                }
                irqs.insert(line);
            }
            if end > u64::from(IrqSet::LINES) {
                return Err(Problem::IrqBeyondLimit {
                    index,
                    range,
                    line: start.max(IrqSet::LINES),
                });
            }
        }

        let count = config.port_ranges().len();
        if count > MAX_PORT_RANGES {
            return Err(Problem::TooManyPortRanges { count });
        }
        let mut ports = Ports::new();
        for (index, range) in config.port_ranges().enumerate() {
            self.check_ports(index, range)?;
            ports
                .push(range)
                .map_err(|_| Problem::TooManyPortRanges { count })?;
        }

        let pci = self.check_pci(config)?;

        let lent = self
            .others()
            .flat_map(|c| c.regions.iter())
            .chain(regions.iter())
            .filter(|r| r.is_lent())
            .map(Region::phys_range);
        let root_regions =
            region::subtract(&self.root_memory, lent).map_err(|_| Problem::RootMemoryFragmented)?;

        Ok(Pending {
            cell: Cell {
                id: CellId(slot as u32),
                name,
                state: CellState::Created,
                cpus,
                regions,
                irqs,
                ports,
                pci,
                reset_address: config.cpu_reset_address(),
            },
            root_regions,
        })
    }

    /// Checks the PCI functions of a new cell: at most [`MAX_PCI_FUNCTIONS`], in segment 0,
    /// no other cell's (the configuration lists each once).
    fn check_pci(&self, config: &CellView<'_>) -> Result<PciFunctions, Problem> {
        let count = config.pci_devices().len();
        let mut pci = PciFunctions::new();
        for (index, device) in config.pci_devices().enumerate() {
            let device = device.address();
            if device.domain != 0 {
                return Err(Problem::PciSegment { index, device });
            }
            if let Some(other) = self.others().find(|c| c.pci.contains(&device)) {
                return Err(Problem::PciTaken {
                    index,
                    device,
                    by: other.name,
                });
            }
            pci.push(device)
                .map_err(|_| Problem::TooManyPciFunctions { count })?;
        }
        Ok(pci)
    }

    /// Checks port range `index` of a new cell: every port the root cell's (its ranges at
    /// boot), none another cell's. The ranges of one cell may overlap each other.
    fn check_ports(&self, index: usize, range: PortRange) -> Result<(), Problem> {
        let end = range.base.saturating_add(range.size);
        if let Some((port, by)) = self.others().find_map(|c| {
            c.ports
                .iter()
                .find(|theirs| theirs.overlaps(&range))
                .map(|theirs| (theirs.base.max(range.base), c.name))
        }) {
            return Err(Problem::PortTaken {
                index,
                range,
                port,
                by,
            });
        }
        let mut at = range.base;
        while at < end {
            let next = self
                .root()
                .ports
                .iter()
                .filter(|r| (r.base..r.base.saturating_add(r.size)).contains(&at))
                .map(|r| r.base.saturating_add(r.size))
                .max();
            match next {
                Some(next) => at = next,
                None => {
                    return Err(Problem::PortNotOwned {
                        index,
                        range,
                        port: at,
                    })
                }
            }
        }
        Ok(())
    }

    /// Checks region `i` of a new cell against its earlier regions, the other cells and the
    /// root cell.
    fn check_region(&self, earlier: &[Region], i: usize, region: &Region) -> Result<(), Problem> {
        let range = region.phys_range();
        let clash = |theirs: &Region| {
            theirs.has_phys()
                && theirs.phys_range().overlaps(&range)
                && !(theirs.is_root_shared() && region.is_root_shared())
        };
        if let Some(other) = earlier
            .iter()
            .position(|r| r.has_phys() && r.phys_range().overlaps(&range))
        {
            return Err(Problem::MemoryOverlap {
                region: i,
                range,
                other,
            });
        }
        for cell in self.others() {
            if let Some(theirs) = cell.regions.iter().position(clash) {
                return Err(Problem::MemoryTaken {
                    region: i,
                    range,
                    by: cell.name,
                    their_region: theirs,
                });
            }
        }
        let root = self.root().regions.iter().map(Region::phys_range);
        if root.clone().any(|r| r.contains_range(&range)) {
            Ok(())
        } else if region::covered(range, root) {
            Err(Problem::MemorySpansRootRegions { region: i, range })
        } else {
            Err(Problem::MemoryNotOwned { region: i, range })
        }
    }

    /// Destroys a cell (whatever its state): every CPU, interrupt line and memory region
    /// goes back to the root cell — CPUs offline, for the root cell to bring online — and
    /// the cell's tables are freed.
    ///
    /// If a step fails, the remaining steps are still taken and the cell is gone from the
    /// registry all the same: giving back as much as possible beats leaving everything
    /// stranded in a cell that can no longer be managed, and a failure here (running out of
    /// table frames while remapping) leaves the rest of the machine consistent. The first
    /// failure is reported.
    pub fn destroy<P: Partition>(
        &mut self,
        id: CellId,
        partition: &mut P,
    ) -> Result<(), DestroyError<P::Error>> {
        let cell = self.cell(id).ok_or(DestroyError::NoSuchCell(id))?;
        if cell.is_root() {
            return Err(DestroyError::Denied { cell: cell.name });
        }
        let Some(cell) = self.slots[id.0 as usize].take() else {
            return Err(DestroyError::NoSuchCell(id));
        };

        let mut first = None;
        let mut failures = 0;
        for step in plan(&cell).rev() {
            let inverse = step.inverse();
            if let Err(error) = perform(partition, &self.root_memory, &cell, inverse) {
                failures += 1;
                first.get_or_insert(Failure {
                    step: inverse,
                    error,
                });
            }
        }

        // With one cell fewer the root cell's memory has as many pieces as before or fewer:
        // it fits.
        let lent = self
            .others()
            .flat_map(|c| c.regions.iter())
            .filter(|r| r.is_lent())
            .map(Region::phys_range);
        let regions = region::subtract(&self.root_memory, lent);
        let root = self.root_mut();
        root.cpus |= cell.cpus;
        root.irqs = root.irqs.union(&cell.irqs);
        debug_assert!(regions.is_ok(), "fewer holes cannot mean more pieces");
        if let Ok(regions) = regions {
            root.regions = regions;
        }
        match first {
            None => Ok(()),
            Some(failed) => Err(DestroyError::Partition {
                cell: cell.name,
                failed,
                failures,
            }),
        }
    }

    /// Changes a cell's state. Allowed: created → loaded (an image was loaded), loaded →
    /// loaded (another one), loaded → running (start), running → shut down, running →
    /// failed. Anything else is [`StateError::WrongState`] (start before load, load after
    /// start, ...); the root cell's state never changes.
    pub fn set_state(&mut self, id: CellId, state: CellState) -> Result<(), StateError> {
        use CellState::*;
        let cell = self
            .slots
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(StateError::NoSuchCell(id))?;
        if cell.is_root() {
            return Err(StateError::Denied { cell: cell.name });
        }
        let allowed = matches!(
            (cell.state, state),
            (Created, Loaded)
                | (Loaded, Loaded)
                | (Loaded, Running)
                | (Running, ShutDown)
                | (Running, Failed)
                | (Running, Reset)
                | (Reset, Loaded)
        );
        if !allowed {
            return Err(StateError::WrongState {
                cell: cell.name,
                from: cell.state,
                to: state,
            });
        }
        cell.state = state;
        Ok(())
    }

    /// Where an image of `len` bytes for guest-physical `guest_addr` of a cell goes: the
    /// physical address, if `[guest_addr, guest_addr + len)` lies inside one loadable region
    /// of the cell and the cell is created or loaded, or stopped by its own reset (its loader
    /// boots it again).
    pub fn loadable(&self, id: CellId, guest_addr: u64, len: u64) -> Result<u64, LoadError> {
        let cell = self.cell(id).ok_or(LoadError::NoSuchCell(id))?;
        if cell.is_root() {
            return Err(LoadError::Denied { cell: cell.name });
        }
        if !matches!(
            cell.state,
            CellState::Created | CellState::Loaded | CellState::Reset
        ) {
            return Err(LoadError::WrongState {
                cell: cell.name,
                state: cell.state,
            });
        }
        let (index, region) = cell
            .regions
            .iter()
            .enumerate()
            .find(|(_, r)| {
                r.flags.contains(MemoryFlags::LOADABLE)
                    && r.has_phys()
                    && r.virt_range().contains(guest_addr)
            })
            .ok_or(LoadError::NotLoadable {
                cell: cell.name,
                address: guest_addr,
            })?;
        let offset = guest_addr - region.virt;
        let fits = region.size - offset;
        if len > fits {
            return Err(LoadError::TooLarge {
                cell: cell.name,
                address: guest_addr,
                len,
                fits,
                region: index,
                range: AddressRange::new(region.virt, region.size),
            });
        }
        Ok(region.phys + offset)
    }
}

/// The steps that create a cell, in order (see [`Partition`]); destroying it takes their
/// inverses in reverse order.
fn plan(cell: &Cell) -> impl DoubleEndedIterator<Item = Step> + Clone + '_ {
    let regions = cell.regions.iter().enumerate().flat_map(|(region, r)| {
        r.is_lent()
            .then_some(Step::UnmapFromRoot { region })
            .into_iter()
            .chain([Step::MapIntoCell { region }])
    });
    [Step::CreateTables]
        .into_iter()
        .chain(regions)
        .chain(cell.irqs.iter().map(|irq| Step::MoveIrqToCell { irq }))
        .chain((0..cell.ports.len()).map(|range| Step::MovePortsToCell { range }))
        .chain((0..cell.pci.len()).map(|function| Step::MovePciToCell { function }))
        .chain(cell.cpu_list().map(|cpu| Step::MoveCpuToCell { cpu }))
}

/// A failed step and the first failed undo step.
type Failed<E> = (Failure<E>, Option<Failure<E>>);

/// Takes the steps that create `cell`; if one fails, takes the inverses of the earlier ones
/// in reverse order (all of them, even if some fail) and returns the failure and the first
/// failed undo step.
fn apply<P: Partition>(
    partition: &mut P,
    root_memory: &[Region],
    cell: &Cell,
) -> Result<(), Failed<P::Error>> {
    let steps = plan(cell);
    for (done, step) in steps.clone().enumerate() {
        if let Err(error) = perform(partition, root_memory, cell, step) {
            let total = steps.clone().count();
            let mut undo = None;
            for earlier in steps.rev().skip(total - done) {
                let inverse = earlier.inverse();
                if let Err(error) = perform(partition, root_memory, cell, inverse) {
                    undo.get_or_insert(Failure {
                        step: inverse,
                        error,
                    });
                }
            }
            return Err((Failure { step, error }, undo));
        }
    }
    Ok(())
}

/// The root cell's view of a region it lends: the guest-physical address and flags of its
/// boot-time region that holds it.
fn root_mapping(root_memory: &[Region], region: &Region) -> Option<(u64, MemoryFlags)> {
    root_memory
        .iter()
        .find(|r| r.phys_range().contains_range(&region.phys_range()))
        .map(|r| (r.virt + (region.phys - r.phys), r.flags))
}

/// Carries out one step for `cell`.
fn perform<P: Partition>(
    partition: &mut P,
    root_memory: &[Region],
    cell: &Cell,
    step: Step,
) -> Result<(), P::Error> {
    let id = cell.id;
    let region = |index: usize| cell.regions.get(index);
    match step {
        Step::CreateTables => partition.create_tables(id),
        Step::DestroyTables => {
            partition.destroy_tables(id);
            Ok(())
        }
        Step::UnmapFromRoot { region: index } => {
            match region(index).and_then(|r| Some((r, root_mapping(root_memory, r)?))) {
                Some((r, (virt, _))) => partition.unmap_from_root(virt, r.phys, r.size),
                None => Ok(()),
            }
        }
        Step::MapIntoRoot { region: index } => {
            match region(index).and_then(|r| Some((r, root_mapping(root_memory, r)?))) {
                Some((r, (virt, flags))) => partition.map_into_root(virt, r.phys, r.size, flags),
                None => Ok(()),
            }
        }
        Step::MapIntoCell { region: index } => match region(index) {
            Some(r) => partition.map_into_cell(id, r),
            None => Ok(()),
        },
        Step::UnmapFromCell { region: index } => match region(index) {
            Some(r) => partition.unmap_from_cell(id, r),
            None => Ok(()),
        },
        Step::MoveIrqToCell { irq } => partition.move_irq(irq, CellId::ROOT, id),
        Step::MoveIrqToRoot { irq } => partition.move_irq(irq, id, CellId::ROOT),
        Step::MovePortsToCell { range } => match cell.ports.get(range) {
            Some(r) => partition.move_ports(r.base, r.size, CellId::ROOT, id),
            None => Ok(()),
        },
        Step::MovePortsToRoot { range } => match cell.ports.get(range) {
            Some(r) => partition.move_ports(r.base, r.size, id, CellId::ROOT),
            None => Ok(()),
        },
        Step::MovePciToCell { function } => match cell.pci.get(function) {
            Some(&device) => partition.move_pci(device, CellId::ROOT, id),
            None => Ok(()),
        },
        Step::MovePciToRoot { function } => match cell.pci.get(function) {
            Some(&device) => partition.move_pci(device, id, CellId::ROOT),
            None => Ok(()),
        },
        Step::MoveCpuToCell { cpu } => partition.move_cpu(cpu, CellId::ROOT, id),
        Step::MoveCpuToRoot { cpu } => partition.move_cpu(cpu, id, CellId::ROOT),
    }
}
