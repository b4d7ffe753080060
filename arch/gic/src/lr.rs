//! Virtual interrupt injection through list registers: GICv2 `GICH_LR<n>` (IHI 0048B §5.3.11)
//! and GICv3 `ICH_LR<n>_EL2` (IHI 0069, see [`LrFormat::V3`]), behind one
//! [`ListRegisterFile`] trait, with a fixed-size per-CPU queue for interrupts that find no
//! free list register ([`ListRegisters`]).

use heapless::Deque;

use crate::regs::GicRegisters;

/// The state of a list register's interrupt (the `State` field of both formats).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LrState {
    /// No interrupt: the list register is free.
    Invalid,
    /// Pending.
    Pending,
    /// Active.
    Active,
    /// Pending and active (software interrupts only).
    PendingActive,
}

impl LrState {
    const fn bits(self) -> u64 {
        match self {
            Self::Invalid => 0b00,
            Self::Pending => 0b01,
            Self::Active => 0b10,
            Self::PendingActive => 0b11,
        }
    }

    const fn from_bits(bits: u64) -> Self {
        match bits & 0b11 {
            0b00 => Self::Invalid,
            0b01 => Self::Pending,
            0b10 => Self::Active,
            _ => Self::PendingActive,
        }
    }
}

/// A virtual interrupt to present to a cell.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VirtualIrq {
    /// The INTID the cell sees.
    pub vintid: u32,
    /// For a hardware interrupt (`HW` = 1): the physical INTID that the cell's deactivation
    /// of `vintid` deactivates. `None` for a software (purely virtual) interrupt.
    pub pintid: Option<u32>,
    /// Priority, 0 highest (GICv2 keeps the top 5 bits).
    pub priority: u8,
    /// Group 1 (IRQ) rather than Group 0 (FIQ).
    pub group1: bool,
    /// GICv2 software SGIs only: the sending CPU that `GICC_IAR.CPUID` reports (0..8).
    pub source_cpu: u8,
}

impl VirtualIrq {
    /// A hardware-backed Group 1 interrupt: `pintid` shown to the cell as `vintid`.
    pub const fn hardware(vintid: u32, pintid: u32, priority: u8) -> Self {
        Self {
            vintid,
            pintid: Some(pintid),
            priority,
            group1: true,
            source_cpu: 0,
        }
    }

    /// A software Group 1 interrupt (e.g. a virtual SGI or an emulated device's interrupt).
    pub const fn software(vintid: u32, priority: u8) -> Self {
        Self {
            vintid,
            pintid: None,
            priority,
            group1: true,
            source_cpu: 0,
        }
    }
}

/// The content of one list register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ListRegister {
    /// The interrupt.
    pub irq: VirtualIrq,
    /// Its state.
    pub state: LrState,
}

/// Why a [`VirtualIrq`] cannot be put in a list register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LrEncodeError {
    /// The virtual INTID is special (1020..1024), or beyond what the format holds.
    VirtualId(u32),
    /// The physical INTID of a hardware interrupt is not a PPI or SPI (16..1020).
    PhysicalId(u32),
    /// A GICv2 SGI source CPU beyond 7.
    SourceCpu(u8),
}

/// The list register layout.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LrFormat {
    /// GICv2 `GICH_LR<n>`, 32 bits (IHI 0048B §5.3.11): VirtualID `[9:0]`, PhysicalID
    /// `[19:10]` (HW = 1; with HW = 0 bit 19 is EOI and `[12:10]` the SGI source CPUID),
    /// Priority `[27:23]` (the top 5 bits of the 8-bit priority), State `[29:28]`,
    /// Grp1 `[30]`, HW `[31]`.
    V2,
    /// GICv3 `ICH_LR<n>_EL2`, 64 bits (IHI 0069, `ICH_LR<n>_EL2` in ch. 12): vINTID `[31:0]`,
    /// pINTID `[44:32]` (HW = 1; with HW = 0 bit 41 is EOI), Priority `[55:48]`,
    /// Group `[60]`, HW `[61]`, State `[63:62]`.
    V3,
}

/// INTIDs 1020..1024 are special and never name an interrupt (IHI 0069 §2.2.1).
const SPECIAL: core::ops::Range<u32> = 1020..1024;
/// LPIs start at 8192 (IHI 0069 §2.2.1).
const LPI_START: u32 = 8192;

impl LrFormat {
    /// The list register value for `lr`.
    #[inline]
    pub fn encode(self, lr: &ListRegister) -> Result<u64, LrEncodeError> {
        let irq = &lr.irq;
        if let Some(pintid) = irq.pintid {
            if !(16..SPECIAL.start).contains(&pintid) {
                return Err(LrEncodeError::PhysicalId(pintid));
            }
        }
        let hw = irq.pintid.is_some();
        match self {
            Self::V2 => {
                if irq.vintid >= SPECIAL.start {
                    return Err(LrEncodeError::VirtualId(irq.vintid));
                }
                if irq.source_cpu > 7 {
                    return Err(LrEncodeError::SourceCpu(irq.source_cpu));
                }
                let physical = match irq.pintid {
                    Some(pintid) => u64::from(pintid),
                    // CPUID only means something for SGIs (IHI 0048B §5.3.11).
                    None if irq.vintid < 16 => u64::from(irq.source_cpu),
                    None => 0,
                };
                Ok(u64::from(irq.vintid)
                    | physical << 10
                    | u64::from(irq.priority >> 3) << 23
                    | lr.state.bits() << 28
                    | u64::from(irq.group1) << 30
                    | u64::from(hw) << 31)
            }
            Self::V3 => {
                if (SPECIAL.start..LPI_START).contains(&irq.vintid) {
                    return Err(LrEncodeError::VirtualId(irq.vintid));
                }
                Ok(u64::from(irq.vintid)
                    | u64::from(irq.pintid.unwrap_or(0)) << 32
                    | u64::from(irq.priority) << 48
                    | u64::from(irq.group1) << 60
                    | u64::from(hw) << 61
                    | lr.state.bits() << 62)
            }
        }
    }

    /// The content of a list register value (the inverse of [`encode`](Self::encode)).
    pub fn decode(self, value: u64) -> ListRegister {
        match self {
            Self::V2 => {
                let hw = value >> 31 & 1 != 0;
                let vintid = (value & 0x3ff) as u32;
                let physical = (value >> 10 & 0x3ff) as u32;
                ListRegister {
                    irq: VirtualIrq {
                        vintid,
                        pintid: hw.then_some(physical),
                        priority: ((value >> 23 & 0x1f) as u8) << 3,
                        group1: value >> 30 & 1 != 0,
                        source_cpu: if !hw && vintid < 16 {
                            (physical & 0x7) as u8
                        } else {
                            0
                        },
                    },
                    state: LrState::from_bits(value >> 28),
                }
            }
            Self::V3 => {
                let hw = value >> 61 & 1 != 0;
                ListRegister {
                    irq: VirtualIrq {
                        vintid: value as u32,
                        pintid: hw.then_some((value >> 32 & 0x1fff) as u32),
                        priority: (value >> 48) as u8,
                        group1: value >> 60 & 1 != 0,
                        source_cpu: 0,
                    },
                    state: LrState::from_bits(value >> 62),
                }
            }
        }
    }
}

/// One CPU's list registers and the controls the manager needs.
///
/// GICv2: [`GichListRegisters`] over the `GICH_*` frame. GICv3: an implementation over
/// `ICH_LR<n>_EL2`, `ICH_ELRSR_EL2`, `ICH_VTR_EL2` and `ICH_HCR_EL2` in the AArch64 crate.
pub trait ListRegisterFile {
    /// The number of implemented list registers (`ListRegs + 1` from `GICH_VTR` or
    /// `ICH_VTR_EL2`), at most 64.
    fn count(&self) -> usize;

    /// Reads list register `n`.
    fn read(&mut self, n: usize) -> u64;

    /// Writes list register `n`.
    fn write(&mut self, n: usize, value: u64);

    /// Bit `n` set if list register `n` holds no valid interrupt (`GICH_ELRSR0/1`,
    /// `ICH_ELRSR_EL2`).
    fn empty(&mut self) -> u64;

    /// Enables or disables the underflow maintenance interrupt (`UIE`, bit 1 of `GICH_HCR`
    /// and `ICH_HCR_EL2`): signalled while at most one list register holds a valid interrupt.
    fn set_underflow_interrupt(&mut self, enabled: bool);
}

impl<L: ListRegisterFile + ?Sized> ListRegisterFile for &mut L {
    fn count(&self) -> usize {
        (**self).count()
    }

    fn read(&mut self, n: usize) -> u64 {
        (**self).read(n)
    }

    fn write(&mut self, n: usize, value: u64) {
        (**self).write(n, value);
    }

    fn empty(&mut self) -> u64 {
        (**self).empty()
    }

    fn set_underflow_interrupt(&mut self, enabled: bool) {
        (**self).set_underflow_interrupt(enabled);
    }
}

/// GICv2 virtual interface control registers (`GICH_*`, IHI 0048B §5.3) of the current CPU.
#[derive(Debug)]
pub struct GichListRegisters<R> {
    regs: R,
    count: usize,
}

impl<R: GicRegisters> GichListRegisters<R> {
    /// `GICH_HCR`, §5.3.1.
    pub const HCR: usize = 0x000;
    /// `GICH_VTR`, §5.3.2.
    pub const VTR: usize = 0x004;
    /// `GICH_ELRSR0`, §5.3.9 (`GICH_ELRSR1` follows).
    pub const ELRSR0: usize = 0x030;
    /// `GICH_LR0`, §5.3.11.
    pub const LR0: usize = 0x100;
    const HCR_UIE: u32 = 1 << 1;

    /// Wraps the `GICH_*` frame; reads the list register count from `GICH_VTR.ListRegs`.
    pub fn new(mut regs: R) -> Self {
        let count = (regs.read32(Self::VTR) & 0x3f) as usize + 1;
        Self { regs, count }
    }

    /// The register frame.
    pub fn registers(&mut self) -> &mut R {
        &mut self.regs
    }
}

impl<R: GicRegisters> ListRegisterFile for GichListRegisters<R> {
    fn count(&self) -> usize {
        self.count
    }

    fn read(&mut self, n: usize) -> u64 {
        u64::from(self.regs.read32(Self::LR0 + 4 * n))
    }

    fn write(&mut self, n: usize, value: u64) {
        self.regs.write32(Self::LR0 + 4 * n, value as u32);
    }

    fn empty(&mut self) -> u64 {
        let low = self.regs.read32(Self::ELRSR0);
        let high = if self.count > 32 {
            self.regs.read32(Self::ELRSR0 + 4)
        } else {
            0
        };
        u64::from(high) << 32 | u64::from(low)
    }

    fn set_underflow_interrupt(&mut self, enabled: bool) {
        let hcr = self.regs.read32(Self::HCR);
        let new = if enabled {
            hcr | Self::HCR_UIE
        } else {
            hcr & !Self::HCR_UIE
        };
        if new != hcr {
            self.regs.write32(Self::HCR, new);
        }
    }
}

/// What [`ListRegisters::inject`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Injected {
    /// Written to this list register.
    ListRegister(usize),
    /// Already pending in a list register or the queue: nothing to do (edge coalescing).
    AlreadyPending,
    /// No usable list register: queued, underflow maintenance interrupt enabled.
    Queued,
}

/// Why [`ListRegisters::inject`] failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InjectError {
    /// The interrupt does not fit the list register format.
    Encode(LrEncodeError),
    /// All list registers busy and the queue full: the interrupt was not injected.
    QueueFull,
}

/// One CPU's virtual interrupt injection: free list registers first, then a FIFO of up to
/// `QUEUE` interrupts, moved into list registers from the underflow maintenance interrupt.
///
/// Per CPU and only touched by that CPU (list registers are per-CPU state): no lock.
#[derive(Debug)]
pub struct ListRegisters<const QUEUE: usize> {
    format: LrFormat,
    queue: Deque<VirtualIrq, QUEUE>,
}

fn low_mask(count: usize) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        (1 << count) - 1
    }
}

impl<const QUEUE: usize> ListRegisters<QUEUE> {
    /// An empty queue for list registers of `format`.
    pub const fn new(format: LrFormat) -> Self {
        Self {
            format,
            queue: Deque::new(),
        }
    }

    /// The list register format.
    pub const fn format(&self) -> LrFormat {
        self.format
    }

    /// The number of queued interrupts.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Makes `irq` pending for the cell on this CPU.
    ///
    /// An interrupt already pending (in a list register or queued) is not added twice. A
    /// software interrupt that is active in a list register becomes pending and active there;
    /// a hardware one waits in the queue until the cell deactivates it (two valid list
    /// registers must never hold the same vINTID).
    #[inline]
    pub fn inject<L: ListRegisterFile + ?Sized>(
        &mut self,
        lrs: &mut L,
        irq: VirtualIrq,
    ) -> Result<Injected, InjectError> {
        let pending = ListRegister {
            irq,
            state: LrState::Pending,
        };
        let value = self.format.encode(&pending).map_err(InjectError::Encode)?;
        let all = low_mask(lrs.count());
        let empty = lrs.empty() & all;
        if empty == all && empty != 0 && self.queue.is_empty() {
            // The common case: nothing else pending or active, so no duplicate to look for.
            let n = empty.trailing_zeros() as usize;
            lrs.write(n, value);
            return Ok(Injected::ListRegister(n));
        }
        self.inject_among_others(lrs, irq, value, empty)
    }

    /// [`ListRegisters::inject`] when other interrupts are in list registers or queued.
    fn inject_among_others<L: ListRegisterFile + ?Sized>(
        &mut self,
        lrs: &mut L,
        irq: VirtualIrq,
        value: u64,
        empty: u64,
    ) -> Result<Injected, InjectError> {
        match self.find(lrs, empty, irq.vintid) {
            Some((_, lr)) if matches!(lr.state, LrState::Pending | LrState::PendingActive) => {
                return Ok(Injected::AlreadyPending);
            }
            Some((n, lr)) if lr.irq.pintid.is_none() && irq.pintid.is_none() => {
                let both = ListRegister {
                    state: LrState::PendingActive,
                    ..lr
                };
                let value = self.format.encode(&both).map_err(InjectError::Encode)?;
                lrs.write(n, value);
                return Ok(Injected::ListRegister(n));
            }
            Some(_) => {}
            None if self.queue.iter().any(|q| q.vintid == irq.vintid) => {
                return Ok(Injected::AlreadyPending);
            }
            None if empty != 0 => {
                let n = empty.trailing_zeros() as usize;
                lrs.write(n, value);
                return Ok(Injected::ListRegister(n));
            }
            None => {}
        }
        if self.queue.iter().any(|q| q.vintid == irq.vintid) {
            return Ok(Injected::AlreadyPending);
        }
        self.queue
            .push_back(irq)
            .map_err(|_| InjectError::QueueFull)?;
        lrs.set_underflow_interrupt(true);
        Ok(Injected::Queued)
    }

    /// Handles the maintenance interrupt: moves queued interrupts into free list registers
    /// (skipping, for now, any whose vINTID is still in a list register), and keeps the
    /// underflow interrupt enabled exactly while something stays queued. Returns how many
    /// were moved.
    pub fn maintenance<L: ListRegisterFile + ?Sized>(&mut self, lrs: &mut L) -> usize {
        let mut moved = 0;
        let mut empty = lrs.empty() & low_mask(lrs.count());
        for _ in 0..self.queue.len() {
            if empty == 0 {
                break;
            }
            let Some(irq) = self.queue.pop_front() else {
                break;
            };
            let encoded = self.format.encode(&ListRegister {
                irq,
                state: LrState::Pending,
            });
            match encoded {
                Ok(value) if self.find(lrs, empty, irq.vintid).is_none() => {
                    let n = empty.trailing_zeros() as usize;
                    lrs.write(n, value);
                    empty &= !(1 << n);
                    moved += 1;
                }
                // Checked at injection, so never an encoding error; still in use: retry later.
                _ => {
                    // Cannot fail: the element was just popped.
                    let _ = self.queue.push_back(irq);
                }
            }
        }
        lrs.set_underflow_interrupt(!self.queue.is_empty());
        moved
    }

    /// Empties every list register and the queue, and turns the underflow interrupt off: the
    /// vCPU is gone (powered off, stopped, its CPU given to another cell).
    ///
    /// A hardware interrupt among them was acknowledged on the physical GIC and stays active
    /// there until something deactivates it; the cell's deactivation will never come. So
    /// `dropped` is called with the physical INTID and the state of each (queued ones are
    /// [`LrState::Pending`]); the caller deactivates it, and may make a pending one pending
    /// again for wherever it is routed now.
    pub fn clear<L: ListRegisterFile + ?Sized>(
        &mut self,
        lrs: &mut L,
        mut dropped: impl FnMut(u32, LrState),
    ) {
        let empty = lrs.empty();
        for n in 0..lrs.count().min(64) {
            if empty & (1 << n) == 0 {
                let lr = self.format.decode(lrs.read(n));
                if let (Some(pintid), true) = (lr.irq.pintid, lr.state != LrState::Invalid) {
                    dropped(pintid, lr.state);
                }
            }
            lrs.write(n, 0);
        }
        while let Some(irq) = self.queue.pop_front() {
            if let Some(pintid) = irq.pintid {
                dropped(pintid, LrState::Pending);
            }
        }
        lrs.set_underflow_interrupt(false);
    }

    /// The valid list register holding `vintid`, if any.
    fn find<L: ListRegisterFile + ?Sized>(
        &self,
        lrs: &mut L,
        empty: u64,
        vintid: u32,
    ) -> Option<(usize, ListRegister)> {
        (0..lrs.count().min(64))
            .filter(|n| empty & (1 << n) == 0)
            .map(|n| (n, self.format.decode(lrs.read(n))))
            .find(|(_, lr)| lr.state != LrState::Invalid && lr.irq.vintid == vintid)
    }
}
