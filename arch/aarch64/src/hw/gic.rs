//! The physical GIC at EL2 and its partitioning for cells, with `cellvisor-gic`'s emulation.
//!
//! Interrupts are routed to EL2 (`HCR_EL2.IMO`/`FMO`). The hypervisor acknowledges each one,
//! drops its priority (`EOImode` = 1) and puts it into a list register: PPIs and SPIs as
//! hardware interrupts (the cell's deactivation deactivates the physical one), SGIs as
//! software interrupts deactivated at once. A full set of list registers queues the rest
//! behind the underflow maintenance interrupt.
//!
//! GICv2 (IHI 0048B): the distributor is emulated, the cell's CPU interface is the virtual
//! CPU interface (GICV) mapped at the GICC address, list registers are in GICH.
//! GICv3 (IHI 0069): the distributor and redistributors are emulated, the CPU interface is
//! the system registers (EL1 accesses go to the ICV registers), `ICC_SGI1R_EL1` writes trap.
//!
//! The hypervisor's own interrupts: the event SGI ([`EVENT_SGI`]: stop, or look at your
//! flags), the EL2 timer's PPI, both at priority 0, the highest, which no cell can give its
//! interrupts ([`cellvisor_gic::HIGHEST_CELL_PRIORITY`]), and the maintenance PPI. Waits at
//! EL2 ([`super::wait`]) raise the priority mask to let only the first two through.

use super::sysreg;
use super::HV;
use crate::board::MAX_CPUS;
use crate::trap::{AccessWidth, MmioTrap};
use aarch64_cpu::registers::{
    ReadWriteable, Readable, Writeable, ICC_SRE_EL2, ICH_AP0R0_EL2, ICH_AP0R1_EL2, ICH_AP0R2_EL2,
    ICH_AP0R3_EL2, ICH_AP1R0_EL2, ICH_AP1R1_EL2, ICH_AP1R2_EL2, ICH_AP1R3_EL2, ICH_HCR_EL2,
    ICH_VMCR_EL2, ICH_VTR_EL2,
};
use cellvisor_gic::line::{self, SpiState};
use cellvisor_gic::lr::{
    GichListRegisters, ListRegisterFile, ListRegisters, LrFormat, LrState, VirtualIrq,
};
use cellvisor_gic::v2::{self, Accessor};
use cellvisor_gic::v3::{self, filter_sgi1r, gicr, Redistributors};
use cellvisor_gic::{
    CellId, CpuSet, Distributor, ForeignWrites, IntId, IrqOwnership, MmioAccess, MmioAddr,
    MmioRegion, Mpidr, Outcome, Topology, Version, Violation, Width, HIGHEST_CELL_PRIORITY,
};
use cellvisor_mmio::Mmio;
use cellvisor_sync::Mutex;
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;

/// The priority of injected interrupts: above Linux's default mask (0xf0).
const VIRTUAL_PRIORITY: u8 = 0xa0;
/// The priority of the hypervisor's wake-ups (the event SGI and the EL2 timer): the highest.
const WAKEUP_PRIORITY: u8 = 0x00;
/// The priority of the maintenance interrupt: below the wake-ups, so that waits mask it.
const MAINTENANCE_PRIORITY: u8 = 0x80;
/// The priority mask outside waits: every priority passes.
const PMR_OPEN: u32 = 0xff;
/// Pending interrupts per CPU beyond the list registers.
const QUEUE: usize = 32;
/// Special INTIDs 1020..1023: nothing to handle (spurious).
const SPECIAL_INTIDS: u32 = 1020;

/// The register windows of the GIC (physical addresses, identity mapped at EL2).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Distributor and its size.
    pub distributor: (u64, u64),
    /// GICv3 redistributor region and its size.
    pub redistributors: Option<(u64, u64)>,
    /// GICv2 CPU interface and its size.
    pub cpu_interface: Option<(u64, u64)>,
    /// GICv2 virtual interface control.
    pub hypervisor_interface: Option<u64>,
    /// The maintenance interrupt.
    pub maintenance: u32,
    /// The EL2 physical timer's PPI.
    pub timer: u32,
}

/// The emulation of the physical GIC: its distributor (either version, one API) and, on a
/// GICv3, its redistributors.
struct Emulation {
    distributor: Distributor,
    redistributors: Option<Redistributors>,
}

impl Emulation {
    /// The emulation of the physical GIC behind `dist` with `policy` for foreign writes.
    fn probe(dist: &mut MmioRegion, root: CellId, v3: bool, policy: ForeignWrites) -> Self {
        let version = if v3 { Version::V3 } else { Version::V2 };
        Self {
            distributor: Distributor::probe(dist, version, root, policy),
            redistributors: v3.then(|| Redistributors::new(Redistributors::GICV3_STRIDE, policy)),
        }
    }

    fn is_v3(&self) -> bool {
        self.distributor.version() == Version::V3
    }
}

struct Gic {
    layout: Layout,
    /// The emulation for cells other than the root cell: foreign writes are violations
    /// (the cell is stopped), where the root cell's stock kernel gets RAZ/WI.
    cell_emulation: Emulation,
    /// The GICv2 CPU interface as used: 4 KiB pages contiguous from here.
    gicc: u64,
    emulation: Emulation,
    mpidrs: [Mpidr; MAX_CPUS],
    cpu_count: usize,
    /// The hypervisor's own SGI and PPIs, bit n for INTID n ([`own_interrupts`]).
    own: u32,
}

impl Gic {
    fn is_v3(&self) -> bool {
        self.emulation.is_v3()
    }
}

static GIC: Once<Gic> = Once::new();
/// Serialises every access to the physical distributor (read-merge-write emulation) and
/// guards who owns which interrupt.
static DISTRIBUTOR: Once<Mutex<IrqOwnership>> = Once::new();

/// The SGI the hypervisor sends a CPU to make it look at its flags: stop its vCPU, enter one
/// from the park loop, end a wait (reserved: cells never see it).
pub const EVENT_SGI: u32 = 15;

fn distributor() -> cellvisor_sync::MutexGuard<'static, IrqOwnership> {
    DISTRIBUTOR.get().expect("GIC used before init").lock()
}

/// Per-CPU injection queues, each touched only by its own CPU with interrupts masked. Left
/// uninitialised (so in .bss, not in the image) until `init_cpu` writes them.
struct PerCpu([UnsafeCell<MaybeUninit<ListRegisters<QUEUE>>>; MAX_CPUS]);
// SAFETY: entry n is only accessed by CPU n, from EL2 with interrupts masked, so never
// concurrently.
unsafe impl Sync for PerCpu {}
static QUEUES: PerCpu = PerCpu([const { UnsafeCell::new(MaybeUninit::uninit()) }; MAX_CPUS]);
/// Bit n: CPU n's interface and queue are initialised ([`init_cpu`] ran on it).
static CPU_READY: AtomicU64 = AtomicU64::new(0);

fn region(base: u64, size: u64) -> MmioRegion {
    // SAFETY: the GIC windows are mapped as device memory in the EL2 map for the whole run
    // (hw::primary maps them before calling init), hold only GIC registers, and every access
    // to the distributor goes through the DISTRIBUTOR lock; the per-CPU windows (GICC, GICH,
    // the CPU's redistributor) are banked or only used by their own CPU.
    unsafe { MmioRegion::new(MmioAddr::new(base as usize), size as usize) }
}

fn gic() -> &'static Gic {
    GIC.get().expect("GIC used before init")
}

/// Whether [`init`] set the GIC up.
pub fn is_initialised() -> bool {
    GIC.get().is_some()
}

/// Whether the GIC is GICv3.
pub fn is_v3() -> bool {
    GIC.get().is_some_and(|gic| gic.emulation.is_v3())
}

/// Sets up the distributor (boot CPU, before the others run) and the partitioning state:
/// the root cell owns `root_irqs` (SPIs).
pub fn init(
    layout: Layout,
    mpidrs: &[u64],
    root_irqs: &mut dyn Iterator<Item = u32>,
) -> Result<(), &'static str> {
    let root = CellId::new(0);
    let (dist_base, dist_size) = layout.distributor;
    let mut dist = region(dist_base, dist_size);
    let v3 = layout.redistributors.is_some();
    let emulation = Emulation::probe(&mut dist, root, v3, ForeignWrites::Ignore);
    let cell_emulation = Emulation::probe(&mut dist, root, v3, ForeignWrites::Report);
    let implemented = emulation.distributor.implemented_irqs();
    let mut ownership = IrqOwnership::new(implemented);
    if !ownership.reserve_private(IntId::new(layout.maintenance)) {
        return Err("the maintenance interrupt is not a PPI");
    }
    if !ownership.reserve_private(IntId::new(layout.timer)) {
        return Err("the EL2 timer interrupt is not a PPI");
    }
    ownership.reserve_private(IntId::new(EVENT_SGI));
    for irq in root_irqs {
        if irq >= 32 && irq < implemented {
            ownership
                .assign(root, IntId::new(irq))
                .map_err(|_| "an SPI of the root cell cannot be assigned")?;
        }
    }
    let mut table = [Mpidr::new(0, 0, 0, 0); MAX_CPUS];
    for (slot, &mpidr) in table.iter_mut().zip(mpidrs) {
        *slot = Mpidr::from_register(mpidr);
    }
    // Distributor on, affinity routing on GICv3 (IHI 0069 §12.9.4; with DS = 1 bit 0 is
    // EnableGrp0, bit 1 EnableGrp1, bit 4 ARE); GICv2: EnableGrp0 | EnableGrp1 (§4.3.1).
    match emulation.distributor.version() {
        Version::V3 => {
            let ctlr = dist.read32(v3::GICD_CTLR);
            dist.write32(v3::GICD_CTLR, ctlr | 1 << 4);
            wait_rwp(&mut dist);
            dist.write32(v3::GICD_CTLR, ctlr | 1 << 4 | 0b11);
            wait_rwp(&mut dist);
        }
        Version::V2 => {
            let ctlr = dist.read32(v2::GICD_CTLR);
            dist.write32(v2::GICD_CTLR, ctlr | 0b11);
        }
    }
    // GICv3: every SPI in Group 1 (Non-secure Group 1 with DS = 1; with two Security
    // states Non-secure writes are ignored and the firmware has done it). Cells cannot
    // change it (their IGROUPR and IGRPMODR writes are ignored).
    if emulation.is_v3() {
        for word in (32..implemented).step_by(32) {
            let n = word as usize / 32 * 4;
            dist.write32(v3::GICD_IGROUPR + n, u32::MAX);
            dist.write32(v3::GICD_IGRPMODR + n, 0);
        }
    }
    // Priorities of SPIs (GICD_IPRIORITYR<n> is at the same offset on GICv2 and GICv3):
    // none above what a cell may set, whatever the reset value (QEMU resets them to 0).
    for word in (32..implemented).step_by(4) {
        clamp_priorities(&mut dist, v2::GICD_IPRIORITYR + word as usize);
    }
    let gicc = layout
        .cpu_interface
        .map_or(0, |(base, size)| cpu_interface_base(base, size));
    DISTRIBUTOR.call_once(|| Mutex::new(ownership));
    GIC.call_once(|| Gic {
        layout,
        cell_emulation,
        gicc,
        emulation,
        mpidrs: table,
        cpu_count: mpidrs.len().min(MAX_CPUS),
        own: own_interrupts(&layout),
    });
    Ok(())
}

/// Where the GICv2 CPU interface's two 4 KiB pages are contiguous. Some SoCs (the ZynqMP's
/// GIC-400) alias each 4 KiB page over 64 KiB, so a 128 KiB window holds page 0 at
/// `base..base + 64K` and page 1 (GICC_DIR) from `base + 64K`: the 8 KiB interface is then
/// contiguous at `base + 0xf000`. Detected by GICC_IIDR (offset 0xfc) reading the same at
/// `base` and `base + 0xf000`.
fn cpu_interface_base(base: u64, size: u64) -> u64 {
    if size < 0x2_0000 {
        return base;
    }
    let mut window = region(base, size);
    let iidr = window.read32(0xfc);
    if iidr != 0 && window.read32(0xf0fc) == iidr {
        base + 0xf000
    } else {
        base
    }
}

/// GICD_CTLR.RWP, bit 31: register writes still propagating.
fn wait_rwp(dist: &mut MmioRegion) {
    for _ in 0..1_000_000 {
        if dist.read32(v3::GICD_CTLR) & 1 << 31 == 0 {
            return;
        }
        core::hint::spin_loop();
    }
    log::warn!("GICD_CTLR.RWP did not clear");
}

/// The CPU's redistributor frame offset in the region, found by its affinity in
/// `GICR_TYPER[63:32]` (IHI 0069 §12.11.35).
fn own_redistributor(gic: &Gic, mpidr: Mpidr) -> Option<u64> {
    let (base, size) = gic.layout.redistributors?;
    let mut region = region(base, size);
    let stride = Redistributors::GICV3_STRIDE as u64;
    let affinity = u32::from(mpidr.aff3()) << 24
        | u32::from(mpidr.aff2()) << 16
        | u32::from(mpidr.aff1()) << 8
        | u32::from(mpidr.aff0());
    (0..size / stride)
        .map(|n| n * stride)
        .find(|&frame| region.read32(frame as usize + gicr::TYPER + 4) == affinity)
}

/// Sets up this CPU's interface and virtual interface. `cpu` is the hypervisor CPU index.
pub fn init_cpu(cpu: usize) {
    let gic = gic();
    let format = match gic.emulation.distributor.version() {
        Version::V3 => {
            let mpidr = gic.mpidrs[cpu];
            match own_redistributor(gic, mpidr) {
                Some(frame) => {
                    let (base, size) = gic.layout.redistributors.unwrap_or((0, 0));
                    let mut r = region(base, size);
                    let frame = frame as usize;
                    // Wake the redistributor: clear ProcessorSleep, wait for ChildrenAsleep.
                    let waker = r.read32(frame + gicr::WAKER);
                    r.write32(frame + gicr::WAKER, waker & !(1 << 1));
                    for _ in 0..1_000_000 {
                        if r.read32(frame + gicr::WAKER) & 1 << 2 == 0 {
                            break;
                        }
                        core::hint::spin_loop();
                    }
                    // Every private line in Group 1 (cells cannot change it); the
                    // hypervisor's interrupts: their priorities, enabled.
                    let sgi = frame + gicr::SGI_BASE;
                    private_priorities(&mut r, sgi + gicr::IPRIORITYR, &gic.layout);
                    r.write32(sgi + gicr::IGROUPR0, u32::MAX);
                    r.write32(sgi + gicr::IGRPMODR0, 0);
                    r.write32(sgi + gicr::ISENABLER0, own_interrupts(&gic.layout));
                }
                None => log::error!("CPU {cpu}: no redistributor with affinity {mpidr:?}"),
            }
            // SRE and Enable (lower ELs use the system registers too), then the physical
            // CPU interface: all priorities, EOImode = 1 (split drop and deactivation).
            ICC_SRE_EL2.modify(ICC_SRE_EL2::SRE::SET + ICC_SRE_EL2::ENABLE::SET);
            aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
            sysreg::set_icc_pmr(u64::from(PMR_OPEN));
            sysreg::set_icc_bpr1(0);
            sysreg::set_icc_ctlr(sysreg::icc_ctlr() | 1 << 1);
            sysreg::set_icc_igrpen1(1);
            ICH_VMCR_EL2.set(0);
            clear_virtual_active_priorities();
            let count = ICH_VTR_EL2.read(ICH_VTR_EL2::ListRegs) as usize + 1;
            for n in 0..count.min(16) {
                sysreg::set_ich_lr(n, 0);
            }
            ICH_HCR_EL2.write(ICH_HCR_EL2::En::SET);
            LrFormat::V3
        }
        Version::V2 => {
            let (dist_base, dist_size) = gic.layout.distributor;
            {
                let _lock = distributor();
                let mut dist = region(dist_base, dist_size);
                // Banked for this CPU: its SGIs and PPIs.
                private_priorities(&mut dist, v2::GICD_IPRIORITYR, &gic.layout);
                dist.write32(v2::GICD_ISENABLER, own_interrupts(&gic.layout));
            }
            if gic.gicc != 0 {
                let mut c = region(gic.gicc, 0x2000);
                c.write32(GICC_PMR, PMR_OPEN);
                c.write32(GICC_BPR, 0);
                // EnableGrp0 | EnableGrp1 | EOImode (bit 9, IHI 0048B §4.4.1).
                c.write32(GICC_CTLR, 0b11 | 1 << 9);
            }
            if let Some(gich) = gic.layout.hypervisor_interface {
                let mut h = region(gich, 0x1000);
                let count = (h.read32(GICH_VTR) & 0x3f) as usize + 1;
                h.write32(GICH_VMCR, 0);
                h.write32(GICH_APR, 0);
                for n in 0..count {
                    h.write32(GICH_LR0 + 4 * n, 0);
                }
                h.write32(GICH_HCR, 1);
            }
            LrFormat::V2
        }
    };
    if let Some(slot) = QUEUES.0.get(cpu) {
        // SAFETY: only this CPU touches its queue (see PerCpu).
        unsafe { (*slot.get()).write(ListRegisters::new(format)) };
        CPU_READY.fetch_or(1 << cpu, Ordering::Release);
    }
}

/// The hypervisor's SGI and PPIs, as a mask of INTIDs 0..32.
fn own_interrupts(layout: &Layout) -> u32 {
    1 << EVENT_SGI | 1 << layout.timer | 1 << layout.maintenance
}

/// The priorities of this CPU's SGIs and PPIs (at `ipriorityr`, 8 words): the hypervisor's
/// own, and none of the others above what a cell may set.
fn private_priorities(regs: &mut MmioRegion, ipriorityr: usize, layout: &Layout) {
    for word in 0..8 {
        clamp_priorities(regs, ipriorityr + 4 * word);
    }
    set_priority(regs, ipriorityr, EVENT_SGI, WAKEUP_PRIORITY);
    set_priority(regs, ipriorityr, layout.timer, WAKEUP_PRIORITY);
    set_priority(regs, ipriorityr, layout.maintenance, MAINTENANCE_PRIORITY);
}

/// Raises each priority of the `GICD_IPRIORITYR`-style word at `offset` that lies above
/// [`HIGHEST_CELL_PRIORITY`] to it.
fn clamp_priorities(regs: &mut MmioRegion, offset: usize) {
    let current = regs.read32(offset);
    let clamped = u32::from_le_bytes(current.to_le_bytes().map(|p| p.max(HIGHEST_CELL_PRIORITY)));
    if clamped != current {
        regs.write32(offset, clamped);
    }
}

fn set_priority(regs: &mut MmioRegion, ipriorityr: usize, irq: u32, priority: u8) {
    let offset = ipriorityr + (irq as usize / 4) * 4;
    let shift = (irq % 4) * 8;
    let value = regs.read32(offset) & !(0xff << shift) | u32::from(priority) << shift;
    regs.write32(offset, value);
}

const GICC_CTLR: usize = 0x0000;
const GICC_PMR: usize = 0x0004;
const GICC_BPR: usize = 0x0008;
const GICC_IAR: usize = 0x000c;
const GICC_EOIR: usize = 0x0010;
const GICC_DIR: usize = 0x1000;
const GICH_HCR: usize = 0x000;
const GICH_VTR: usize = 0x004;
const GICH_VMCR: usize = 0x008;
/// Active priorities of the virtual CPU interface (IHI 0048B §5.3.7).
const GICH_APR: usize = 0x0f0;
const GICH_LR0: usize = 0x100;

/// GICv3 list registers in `ICH_LR<n>_EL2`.
struct IchListRegisters {
    count: usize,
}

impl ListRegisterFile for IchListRegisters {
    fn count(&self) -> usize {
        self.count
    }

    fn read(&mut self, n: usize) -> u64 {
        sysreg::ich_lr(n)
    }

    #[inline(always)]
    fn write(&mut self, n: usize, value: u64) {
        sysreg::set_ich_lr(n, value);
    }

    #[inline(always)]
    fn empty(&mut self) -> u64 {
        sysreg::ich_elrsr()
    }

    fn set_underflow_interrupt(&mut self, enabled: bool) {
        // Not `modify`: the register is only written when UIE changes.
        let hcr = ICH_HCR_EL2.get();
        let uie = if enabled {
            ICH_HCR_EL2::UIE::SET
        } else {
            ICH_HCR_EL2::UIE::CLEAR
        };
        let new = uie.modify(hcr);
        if new != hcr {
            ICH_HCR_EL2.set(new);
        }
    }
}

/// This CPU's list registers, of either GIC version: an enum rather than a trait object, so
/// that the injection path is dispatched statically.
enum CpuListRegisters {
    V3(IchListRegisters),
    V2(GichListRegisters<MmioRegion>),
}

impl ListRegisterFile for CpuListRegisters {
    #[inline]
    fn count(&self) -> usize {
        match self {
            Self::V3(lrs) => lrs.count(),
            Self::V2(lrs) => lrs.count(),
        }
    }

    #[inline]
    fn read(&mut self, n: usize) -> u64 {
        match self {
            Self::V3(lrs) => lrs.read(n),
            Self::V2(lrs) => lrs.read(n),
        }
    }

    #[inline]
    fn write(&mut self, n: usize, value: u64) {
        match self {
            Self::V3(lrs) => lrs.write(n, value),
            Self::V2(lrs) => lrs.write(n, value),
        }
    }

    #[inline]
    fn empty(&mut self) -> u64 {
        match self {
            Self::V3(lrs) => lrs.empty(),
            Self::V2(lrs) => lrs.empty(),
        }
    }

    #[inline]
    fn set_underflow_interrupt(&mut self, enabled: bool) {
        match self {
            Self::V3(lrs) => lrs.set_underflow_interrupt(enabled),
            Self::V2(lrs) => lrs.set_underflow_interrupt(enabled),
        }
    }
}

/// Runs `f` with this CPU's list registers and queue.
#[inline]
fn with_list_registers<T>(
    cpu: usize,
    f: impl FnOnce(&mut CpuListRegisters, &mut ListRegisters<QUEUE>) -> T,
) -> Option<T> {
    with_list_registers_of(gic(), cpu, f)
}

/// [`with_list_registers`] with the GIC at hand.
#[inline]
fn with_list_registers_of<T>(
    gic: &Gic,
    cpu: usize,
    f: impl FnOnce(&mut CpuListRegisters, &mut ListRegisters<QUEUE>) -> T,
) -> Option<T> {
    if !cpu_ready(cpu) {
        return None;
    }
    // SAFETY: only this CPU touches its queue, with interrupts masked (see PerCpu), and
    // CPU_READY says init_cpu initialised it.
    let queue = unsafe { (*QUEUES.0.get(cpu)?.get()).assume_init_mut() };
    let mut lrs = match gic.emulation.distributor.version() {
        Version::V3 => CpuListRegisters::V3(IchListRegisters {
            count: ICH_VTR_EL2.read(ICH_VTR_EL2::ListRegs) as usize + 1,
        }),
        Version::V2 => {
            let gich = gic.layout.hypervisor_interface?;
            CpuListRegisters::V2(GichListRegisters::new(region(gich, 0x1000)))
        }
    };
    Some(f(&mut lrs, queue))
}

/// What [`handle_irq`] did, for the counters.
pub enum Handled {
    /// An interrupt was injected (or queued).
    Injected,
    /// The maintenance interrupt.
    Maintenance,
    /// Nothing pending any more.
    Spurious,
    /// The hypervisor's event SGI ([`EVENT_SGI`]): a stop request, or a stale wake-up.
    Event,
    /// The EL2 timer, left armed by a wait (switched off now).
    Timer,
}

/// Handles one physical interrupt taken to EL2 on `cpu` while a cell ran there.
pub fn handle_irq(cpu: usize) -> Handled {
    let gic = gic();
    let v3 = gic.emulation.is_v3();
    let gicc = gic.gicc;
    let (iar, intid) = acknowledge(v3, gicc);
    if (SPECIAL_INTIDS..1024).contains(&intid) {
        return Handled::Spurious;
    }
    // One test for the hypervisor's own interrupts, off the path of a cell's.
    if intid < 32 && gic.own & 1 << intid != 0 {
        return handle_own(gic, cpu, iar, intid);
    }
    let eoi = |deactivate: bool| end(v3, gicc, iar, deactivate);
    let software = intid < 16;
    eoi(software);
    let irq = VirtualIrq {
        vintid: intid,
        pintid: (!software).then_some(intid),
        priority: VIRTUAL_PRIORITY,
        // GICv2 cells use Group 0 (their GICV_CTLR enables Group 0 only), GICv3 Group 1.
        group1: v3,
        source_cpu: if v3 { 0 } else { (iar >> 10 & 0x7) as u8 },
    };
    let result = with_list_registers_of(gic, cpu, |lrs, queue| queue.inject(lrs, irq));
    match result {
        Some(Ok(_)) => {}
        Some(Err(error)) => {
            log::warn!("CPU {cpu}: interrupt {intid} dropped: {error:?}");
            if !software {
                eoi_deactivate_only(v3, gicc, iar);
            }
        }
        None => {
            if !software {
                eoi_deactivate_only(v3, gicc, iar);
            }
        }
    }
    Handled::Injected
}

/// One of the hypervisor's own interrupts, acknowledged (`iar`).
#[inline(never)]
fn handle_own(gic: &Gic, cpu: usize, iar: u64, intid: u32) -> Handled {
    if intid == gic.layout.timer {
        // Left armed by a wait: switched off before the deactivation, or its level
        // interrupt would come straight back.
        super::timer::disarm();
    }
    end(gic.is_v3(), gic.gicc, iar, true);
    if intid == gic.layout.maintenance {
        with_list_registers(cpu, |lrs, queue| queue.maintenance(lrs));
        Handled::Maintenance
    } else if intid == EVENT_SGI {
        Handled::Event
    } else {
        Handled::Timer
    }
}

/// Acknowledges the highest-priority pending interrupt: the IAR value and its INTID.
#[inline(always)]
fn acknowledge(v3: bool, gicc: u64) -> (u64, u32) {
    if v3 {
        let iar = sysreg::icc_iar1();
        (iar, (iar & 0xff_ffff) as u32)
    } else {
        let iar = u64::from(region(gicc, 0x2000).read32(GICC_IAR));
        (iar, (iar & 0x3ff) as u32)
    }
}

/// Drops the running priority of an acknowledged interrupt (`EOImode` = 1), and deactivates
/// it if `deactivate`.
#[inline(always)]
fn end(v3: bool, gicc: u64, iar: u64, deactivate: bool) {
    if v3 {
        sysreg::icc_eoir1(iar);
        if deactivate {
            sysreg::icc_dir(iar);
        }
    } else {
        let mut c = region(gicc, 0x2000);
        c.write32(GICC_EOIR, iar as u32);
        if deactivate {
            c.write32(GICC_DIR, iar as u32);
        }
    }
}

/// Whether CPU `cpu`'s interface is set up ([`init_cpu`] ran on it): it can take interrupts,
/// so it can sleep in WFI and be woken.
pub fn cpu_ready(cpu: usize) -> bool {
    cpu < 64 && CPU_READY.load(Ordering::Acquire) & 1 << cpu != 0
}

/// The GIC, if CPU `cpu`'s interface is set up.
fn ready_for(cpu: usize) -> Option<&'static Gic> {
    GIC.get().filter(|_| cpu_ready(cpu))
}

/// This CPU's priority mask (`ICC_PMR_EL1`, `GICC_PMR`).
fn priority_mask(gic: &Gic) -> u32 {
    if gic.is_v3() {
        sysreg::icc_pmr() as u32
    } else {
        region(gic.gicc, 0x2000).read32(GICC_PMR)
    }
}

fn set_priority_mask(gic: &Gic, mask: u32) {
    if gic.is_v3() {
        sysreg::set_icc_pmr(u64::from(mask));
    } else {
        region(gic.gicc, 0x2000).write32(GICC_PMR, mask);
    }
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// Before a wait on this CPU (`cpu`): masks every interrupt but the hypervisor's wake-ups
/// (priorities above [`HIGHEST_CELL_PRIORITY`]); returns the mask to restore, or `None` if
/// this CPU cannot take interrupts yet.
pub fn mask_for_wait(cpu: usize) -> Option<u32> {
    let gic = ready_for(cpu)?;
    let mask = priority_mask(gic);
    set_priority_mask(gic, u32::from(HIGHEST_CELL_PRIORITY));
    Some(mask)
}

/// After a wait: restores the priority mask [`mask_for_wait`] returned.
pub fn unmask_after_wait(cpu: usize, mask: u32) {
    if let Some(gic) = ready_for(cpu) {
        set_priority_mask(gic, mask);
    }
}

/// Masks every interrupt on this CPU for good (priority mask 0), if it can take any: a CPU
/// that stops after a fatal error then sleeps in WFI instead of waking for each interrupt.
pub fn mask_all(cpu: usize) {
    if let Some(gic) = ready_for(cpu) {
        set_priority_mask(gic, 0);
    }
}

/// In a wait, after WFI: acknowledges and ends the wake-ups pending on this CPU (the event
/// SGI, the EL2 timer, which the caller has switched off). The priority mask lets nothing
/// else be acknowledged.
pub fn take_wakeups(cpu: usize) {
    let gic = gic();
    let v3 = gic.is_v3();
    // At most as many as there are hypervisor interrupts, plus a new event that came in
    // meanwhile: the caller looks at its condition between two rounds anyway.
    for _ in 0..4 {
        let (iar, intid) = acknowledge(v3, gic.gicc);
        if (SPECIAL_INTIDS..1024).contains(&intid) {
            return;
        }
        if intid != EVENT_SGI && intid != gic.layout.timer {
            // Cannot happen: no other interrupt has a wake-up's priority. Recorded in the
            // console ring (lock free: this runs inside waits for the console lock).
            let _ = core::fmt::Write::write_fmt(
                &mut super::HV.ring(),
                format_args!(
                    "cellvisor: CPU {cpu}: interrupt {intid} got through a wait's priority mask\n"
                ),
            );
        }
        end(v3, gic.gicc, iar, true);
    }
}

/// Clears the virtual CPU interface's active priorities (GICv3), so that the next vCPU on
/// this CPU does not inherit a preemption level of the last one: every `ICH_AP0R<n>_EL2` and
/// `ICH_AP1R<n>_EL2` the CPU has. `ICH_VTR_EL2.PREbits` + 1 preemption bits mean 1, 2 or 4
/// registers of each group (5, 6 or 7 bits); the others are UNDEFINED to access.
fn clear_virtual_active_priorities() {
    let preemption_bits = ICH_VTR_EL2.read(ICH_VTR_EL2::PREbits) + 1;
    ICH_AP0R0_EL2.set(0);
    ICH_AP1R0_EL2.set(0);
    if preemption_bits >= 6 {
        ICH_AP0R1_EL2.set(0);
        ICH_AP1R1_EL2.set(0);
    }
    if preemption_bits >= 7 {
        ICH_AP0R2_EL2.set(0);
        ICH_AP0R3_EL2.set(0);
        ICH_AP1R2_EL2.set(0);
        ICH_AP1R3_EL2.set(0);
    }
}

fn eoi_deactivate_only(v3: bool, gicc: u64, iar: u64) {
    if v3 {
        sysreg::icc_dir(iar);
    } else {
        region(gicc, 0x2000).write32(GICC_DIR, iar as u32);
    }
}

/// Drops every virtual interrupt of this CPU (its vCPU powers off). A hardware interrupt
/// among them is deactivated (it would stay active, and never come again, otherwise); an
/// edge-triggered SPI the cell had not taken yet is made pending again, for the CPU it is
/// routed to now (a level-triggered one comes again by itself while its device asserts it).
pub fn reset_cpu_interface(cpu: usize) {
    if let Some(gic) = GIC.get() {
        let v3 = gic.is_v3();
        let (base, size) = gic.layout.distributor;
        with_list_registers(cpu, |lrs, queue| {
            queue.clear(lrs, |pintid, state| {
                eoi_deactivate_only(v3, gic.gicc, u64::from(pintid));
                if pintid >= 32 && state == LrState::Pending {
                    // GICD_ICFGR<n> and GICD_ISPENDR<n>: same offsets on GICv2 and GICv3.
                    let mut dist = region(base, size);
                    let n = pintid as usize;
                    let edge = dist.read32(v2::GICD_ICFGR + n / 16 * 4) >> (n % 16 * 2 + 1) & 1;
                    if edge == 1 {
                        dist.write32(v2::GICD_ISPENDR + n / 32 * 4, 1 << (n % 32));
                    }
                }
            });
        });
        if gic.emulation.is_v3() {
            ICH_VMCR_EL2.set(0);
            clear_virtual_active_priorities();
        } else if let Some(gich) = gic.layout.hypervisor_interface {
            let mut h = region(gich, 0x1000);
            h.write32(GICH_VMCR, 0);
            h.write32(GICH_APR, 0);
        }
    }
}

/// Which emulated GIC block an address is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Block {
    /// The distributor, at this offset.
    Distributor(usize),
    /// The redistributor region, at this offset.
    Redistributors(usize),
}

/// The emulated block `ipa` is in (the root cell sees the GIC at its physical addresses).
pub fn block_of(ipa: u64) -> Option<Block> {
    let gic = GIC.get()?;
    let (base, size) = gic.layout.distributor;
    if (base..base + size).contains(&ipa) {
        return Some(Block::Distributor((ipa - base) as usize));
    }
    let (base, size) = gic.layout.redistributors?;
    (base..base + size)
        .contains(&ipa)
        .then(|| Block::Redistributors((ipa - base) as usize))
}

/// The cell a trapped access comes from: its id and CPUs, and the CPU that made it.
#[derive(Clone, Copy, Debug)]
pub struct Requester {
    /// The cell.
    pub cell: CellId,
    /// The cell's CPUs (hypervisor CPU indices).
    pub cpus: u64,
    /// The accessing CPU.
    pub cpu: usize,
}

impl Requester {
    fn accessor(self) -> Accessor {
        Accessor {
            cell: self.cell,
            cpus: CpuSet::from_bits(self.cpus),
            cpu: self.cpu,
        }
    }
}

/// Emulates a trapped access of `by` to `block`.
pub fn emulate(
    by: Requester,
    block: Block,
    trap: &MmioTrap,
    value: u64,
) -> Result<Outcome, Violation> {
    let gic = gic();
    let width = match trap.width {
        AccessWidth::Byte => Width::Byte,
        AccessWidth::Half => Width::Half,
        AccessWidth::Word => Width::Word,
        AccessWidth::Double => Width::Double,
    };
    let accessor = by.accessor();
    let topology = Topology::new(&gic.mpidrs[..gic.cpu_count]);
    let access = |offset| {
        if trap.write {
            MmioAccess::write(offset, width, value)
        } else {
            MmioAccess::read(offset, width)
        }
    };
    let ownership = distributor();
    // The root cell and cells running a stock OS: foreign writes dropped; other cells:
    // reported.
    let emulation = if by.cell.is_root() || HV.cell(by.cell).stock_os() {
        &gic.emulation
    } else {
        &gic.cell_emulation
    };
    match (block, &emulation.redistributors) {
        (Block::Distributor(offset), _) => {
            let (base, size) = gic.layout.distributor;
            emulation.distributor.access(
                &mut region(base, size),
                &ownership,
                accessor,
                &topology,
                access(offset),
            )
        }
        (Block::Redistributors(offset), Some(r)) => {
            let (base, size) = gic.layout.redistributors.unwrap_or((0, 0));
            let outcome = r.access(
                &mut region(base, size),
                &ownership,
                accessor,
                &topology,
                access(offset),
            )?;
            Ok(mark_last_redistributor(outcome, offset, size as usize))
        }
        (Block::Redistributors(offset), None) => Err(Violation {
            cell: accessor.cell,
            block: cellvisor_gic::Block::Redistributors,
            access: access(offset),
            reason: cellvisor_gic::Reason::ReservedOffset,
        }),
    }
}

/// `GICR_TYPER.Last` (bit 4) for the last redistributor of the configured region: kernels
/// walk the redistributors until they find `Last` (IHI 0069 §12.11.35), and a machine with
/// more CPUs than the configuration describes has further frames the cell must not reach.
fn mark_last_redistributor(outcome: Outcome, offset: usize, size: usize) -> Outcome {
    let stride = Redistributors::GICV3_STRIDE;
    let Some(last) = size.checked_sub(stride) else {
        return outcome;
    };
    match outcome {
        Outcome::Read(value) if offset == last + gicr::TYPER => Outcome::Read(value | 1 << 4),
        other => other,
    }
}

/// Sends the SGIs a trapped `ICC_SGI1R_EL1` write of `by` asks for.
pub fn send_sgi1r(by: Requester, value: u64) -> Result<(), Violation> {
    let gic = gic();
    let topology = Topology::new(&gic.mpidrs[..gic.cpu_count]);
    let request = {
        let ownership = distributor();
        let policy = if by.cell.is_root() || HV.cell(by.cell).stock_os() {
            ForeignWrites::Ignore
        } else {
            ForeignWrites::Report
        };
        filter_sgi1r(value, &ownership, by.accessor(), &topology, policy)?
    };
    for write in request.physical_writes(&topology) {
        sysreg::icc_sgi1r(write);
    }
    Ok(())
}

/// Sends the event SGI to hypervisor CPU `cpu` (nothing before the GIC is set up). Lock
/// free: the unlock of every lock ends here when someone waits for it.
pub fn send_event(cpu: usize) {
    let Some(gic) = GIC.get() else { return };
    // What the CPU is to see (a flag, a released lock) before it sees the SGI.
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISHST);
    match gic.emulation.distributor.version() {
        Version::V3 => {
            let topology = Topology::new(&gic.mpidrs[..gic.cpu_count]);
            let request = v3::SgiRequest {
                intid: IntId::new(EVENT_SGI),
                targets: CpuSet::single(cpu),
            };
            for write in request.physical_writes(&topology) {
                sysreg::icc_sgi1r(write);
            }
            aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
        }
        Version::V2 => {
            // CPU interface n is hypervisor CPU n, as for every GICv2 target list here.
            // GICD_SGIR is one write: no read-merge-write, so no distributor lock.
            if cpu < 8 {
                let (base, size) = gic.layout.distributor;
                region(base, size).write32(v2::GICD_SGIR, 1 << (16 + cpu) | EVENT_SGI);
            }
        }
    }
}

/// What the root cell had set for each SPI that another cell owns now (by INTID), to give
/// back on [`transfer`]. Only touched with the [`DISTRIBUTOR`] lock held.
static ROOT_SPIS: Mutex<[SpiState; 1020]> = Mutex::new(
    [SpiState {
        enabled: false,
        priority: 0,
        config: 0,
        route: 0,
    }; 1020],
);

/// Moves the SPIs `irqs` from cell `from` to cell `to`. SGIs and PPIs are skipped. All or
/// nothing.
///
/// Nothing a cell did to a line reaches its next owner: each line is quiesced (disabled, not
/// pending, not active, Group 1 on GICv3); one that leaves the root cell has the root cell's
/// settings saved, and gets them back when it returns ([`cellvisor_gic::line`]). The new
/// owner enables and routes it.
pub fn transfer(from: CellId, to: CellId, irqs: &[u32]) -> Result<(), &'static str> {
    let gic = gic();
    let v3 = gic.is_v3();
    let mut ownership = distributor();
    let mut list = heapless::Vec::<IntId, 1024>::new();
    for &irq in irqs.iter().filter(|&&irq| irq >= 32) {
        list.push(IntId::new(irq))
            .map_err(|_| "too many interrupts")?;
    }
    ownership
        .transfer(from, to, &list)
        .map_err(|_| "an interrupt is not owned by the cell it is taken from")?;
    let (base, size) = gic.layout.distributor;
    let mut dist = region(base, size);
    let mut saved = ROOT_SPIS.lock();
    for &irq in &list {
        let slot = saved.get_mut(irq.get() as usize);
        match slot {
            Some(slot) if from.is_root() => {
                *slot = SpiState::capture(&mut dist, irq, v3);
                line::quiesce_spi(&mut dist, irq, v3);
            }
            Some(slot) if to.is_root() => slot.restore(&mut dist, irq, v3),
            _ => line::quiesce_spi(&mut dist, irq, v3),
        }
    }
    Ok(())
}

/// Resets this CPU's private interrupts (SGIs and PPIs) but the hypervisor's: it is about to
/// run a vCPU of another cell than before, which must find nothing the previous one left
/// (enabled, pending or active lines, priorities). Its kernel sets them up as after reset.
pub fn reset_private(cpu: usize) {
    let Some(gic) = GIC.get() else { return };
    let reserved = gic.own;
    match gic.emulation.distributor.version() {
        Version::V3 => {
            let Some((base, size)) = gic.layout.redistributors else {
                return;
            };
            if let Some(frame) = own_redistributor(gic, gic.mpidrs[cpu]) {
                // The lock of every emulated access: another CPU of the cell this one left
                // may still write this redistributor (read-merge-write of the same words).
                let _lock = distributor();
                let mut r = region(base, size);
                line::reset_private(&mut r, frame as usize + gicr::SGI_BASE, reserved, true);
            }
        }
        Version::V2 => {
            let (base, size) = gic.layout.distributor;
            let _lock = distributor();
            // Banked: this CPU's SGIs and PPIs.
            line::reset_private(&mut region(base, size), 0, reserved, false);
        }
    }
}

/// The physical RD_base of hypervisor CPU `cpu`'s redistributor (GICv3).
pub fn redistributor_of(cpu: usize) -> Option<u64> {
    let gic = gic();
    let (base, _) = gic.layout.redistributors?;
    own_redistributor(gic, *gic.mpidrs.get(cpu)?).map(|offset| base + offset)
}

/// The GICv2 CPU interface base (as configured), for cells' platform information.
pub fn cpu_interface() -> Option<u64> {
    GIC.get()?.layout.cpu_interface.map(|(base, _)| base)
}

/// The distributor base.
pub fn distributor_base() -> u64 {
    gic().layout.distributor.0
}
