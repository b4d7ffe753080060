//! The hypervisor's own EL2 stage-1 map: built once by the primary CPU into a frame pool
//! inside the image, then switched on by every CPU.

use crate::memmap::{self, ImageLayout};
use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    ReadWriteable, Readable, Writeable, ID_AA64MMFR0_EL1, MAIR_EL2, SCTLR_EL2, TCR_EL2, TTBR0_EL2,
};
use cellvisor_paging::FramePool;
use cellvisor_paging::{
    Error, LinearMemory, PaSize, PageTable, PhysAddr, Stage1El2, TableMemory,
    MAIR_EL2 as MAIR_VALUE,
};
use cellvisor_paging::{MapMode, Mapping, Stale, TlbInvalidate, VirtAddr};
use cellvisor_sync::Mutex;
use core::cell::UnsafeCell;

/// Frames for the EL2 tables: enough for the image, the devices of any board and the
/// splits the per-section permissions cause (qemu-arm64 and zcu102 use 8 and 10).
pub const POOL_FRAMES: usize = 16;

#[repr(C, align(4096))]
struct Pool(UnsafeCell<[[u64; 512]; POOL_FRAMES]>);

// SAFETY: the pool is only written by the primary CPU while it builds the tables, before
// any other CPU runs; afterwards only the hardware walkers read it.
unsafe impl Sync for Pool {}

static POOL: Pool = Pool(UnsafeCell::new([[0; 512]; POOL_FRAMES]));

/// The register values every CPU loads to switch its MMU on.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct MmuConfig {
    /// MAIR_EL2.
    pub mair: u64,
    /// TCR_EL2.
    pub tcr: u64,
    /// TTBR0_EL2.
    pub ttbr0: u64,
}

/// The tree and its frame bookkeeping, kept for [`extend`].
struct Tables {
    table: PageTable<Stage1El2>,
    frames: FramePool<POOL_FRAMES>,
}

static TABLES: Mutex<Option<Tables>> = Mutex::new(None);

/// Builds the map. Runs with the MMU off, so the pool is reached at its physical address.
pub fn build(image: ImageLayout, devices: &[(PhysAddr, u64)]) -> Result<MmuConfig, Error> {
    let pool_base = POOL.0.get() as u64;
    // Lines of the pool may be in the caches from an earlier boot stage; drop them so the
    // walker, which reads through the caches once the MMU is on, sees what we write now.
    super::cache::invalidate(pool_base as usize, POOL_FRAMES * 4096);
    let mut memory = TableMemory {
        frames: FramePool::<POOL_FRAMES>::new(PhysAddr::new(pool_base)),
        // SAFETY: with the MMU off, every physical address is reached at itself (offset 0);
        // the frame pool only hands out frames of POOL, which nothing else uses.
        memory: unsafe { LinearMemory::new(0) },
    };
    let pa_size =
        PaSize::from_parange((ID_AA64MMFR0_EL1.get() & 0xf) as u8).unwrap_or(PaSize::Bits40);
    let format = Stage1El2::new(pa_size.bits()).map_err(|_| Error {
        operation: cellvisor_paging::Operation::Create,
        location: cellvisor_paging::Location::Table,
        reason: cellvisor_paging::Reason::OutOfRange {
            bits: pa_size.bits(),
        },
    })?;
    let mut table = PageTable::new(format, &mut memory)?;
    memmap::build(&mut table, &mut memory, image, devices)?;
    super::cache::clean_invalidate(pool_base as usize, POOL_FRAMES * 4096);
    let config = MmuConfig {
        mair: MAIR_VALUE,
        tcr: format.tcr(pa_size).bits(),
        ttbr0: table.root().as_u64(),
    };
    *TABLES.lock() = Some(Tables {
        table,
        frames: memory.frames,
    });
    Ok(config)
}

/// Invalidates this CPU's EL2 TLB for every change of the live map (only the boot CPU
/// runs while the map is extended; the others invalidate when they switch their MMU on).
struct LiveEl2;

impl TlbInvalidate<VirtAddr> for LiveEl2 {
    fn invalidate(&mut self, _start: VirtAddr, _size: u64, _stale: Stale) {
        // SAFETY: dropping cached EL2 translations has no effect on memory.
        unsafe {
            core::arch::asm!(
                "dsb ishst",
                "tlbi alle2",
                "dsb ish",
                "isb",
                options(nostack)
            )
        };
    }
}

/// Adds identity mappings to the live map of the boot CPU (MMU on), before the other CPUs
/// start. Ranges are widened to whole pages.
pub fn extend(mappings: &[(PhysAddr, u64, cellvisor_paging::Attributes)]) -> Result<usize, Error> {
    let mut guard = TABLES.lock();
    let Some(tables) = guard.as_mut() else {
        return Ok(0);
    };
    let mut memory = TableMemory {
        frames: &mut tables.frames,
        // SAFETY: EL2 runs identity mapped; the pool frames are mapped read-write in the
        // image's data/bss section.
        memory: unsafe { LinearMemory::new(0) },
    };
    for &(base, size, attributes) in mappings {
        let start = base.as_u64() & !0xfff;
        let end = (base.as_u64() + size).next_multiple_of(0x1000);
        tables.table.map(
            &mut memory,
            &mut LiveEl2,
            Mapping {
                input: VirtAddr::new(start),
                output: PhysAddr::new(start),
                size: end - start,
                attributes,
            },
            MapMode::Replace,
        )?;
    }
    Ok(tables.frames.in_use())
}

/// Switches this CPU's MMU and caches on with `config`.
pub fn enable(config: &MmuConfig) {
    MAIR_EL2.set(config.mair);
    TCR_EL2.set(config.tcr);
    TTBR0_EL2.set(config.ttbr0);
    barrier::isb(barrier::SY);
    // SAFETY: invalidating all EL2 TLB entries of this CPU has no effect on memory; stale
    // entries from an earlier boot stage must not survive into our regime.
    unsafe { core::arch::asm!("tlbi alle2", "dsb nsh", options(nostack, preserves_flags)) };
    barrier::isb(barrier::SY);
    // M: MMU on; C, I: data and instruction caches; SA: stack alignment check;
    // WXN: writable memory is never executable. A (alignment check) off.
    SCTLR_EL2.modify(
        SCTLR_EL2::M::Enable
            + SCTLR_EL2::C::Cacheable
            + SCTLR_EL2::I::Cacheable
            + SCTLR_EL2::SA::Enable
            + SCTLR_EL2::WXN::Enable
            + SCTLR_EL2::A::Disable,
    );
    barrier::isb(barrier::SY);
}
