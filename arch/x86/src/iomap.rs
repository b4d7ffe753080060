//! The SVM permission maps the CPUs read while guests run (AMD APM Vol. 2 §15.10-15.11): the
//! root cell's MSR and I/O maps, every other cell's MSR map (everything exits), and one I/O
//! map per cell slot (everything exits but the cell's ports). The layout is `permission`'s.
//! On VMX the I/O maps serve as they are (their first 8 KiB are VMX's I/O bitmaps A and B),
//! and the MSR maps are converted once into VMX's layout.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use cellvisor_cell::CellId;

use crate::permission::{intercept_ports, IOPM_SIZE, MSRPM_SIZE, VMX_MSR_BITMAP_SIZE};

/// The ACPI PM1a control port the root cell's map traps (`u32::MAX`: none), set at boot.
pub static POWER_PORT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A permission map: pages the CPU reads while a guest runs.
#[repr(C, align(4096))]
pub struct Bitmap<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: written by the boot CPU before any vCPU runs, and after that only by the holder of
// the core's management lock (ports moving between cells); the CPUs read the maps in
// hardware, where either value of a bit being changed is safe for the guest.
unsafe impl<const N: usize> Sync for Bitmap<N> {}

impl<const N: usize> core::fmt::Debug for Bitmap<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Bitmap({:#x}, {N} bytes)", self.address())
    }
}

impl<const N: usize> Bitmap<N> {
    /// Its physical address, for the VMCB.
    pub fn address(&self) -> u64 {
        self.0.get() as u64
    }

    /// The map, to change it.
    ///
    /// # Safety
    ///
    /// The caller is the boot CPU before any vCPU runs, or holds the core's management lock.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes(&self) -> &mut [u8; N] {
        // SAFETY: by the caller's promise, no other writer; hardware reads race harmlessly.
        unsafe { &mut *self.0.get() }
    }
}

/// The root cell's MSR permission map.
pub static MSRPM: Bitmap<MSRPM_SIZE> = Bitmap(UnsafeCell::new([0; MSRPM_SIZE]));
/// The root cell's I/O permission map.
pub static IOPM: Bitmap<IOPM_SIZE> = Bitmap(UnsafeCell::new([0; IOPM_SIZE]));

/// Every other cell's MSR permission map: every MSR exits (filled at boot).
pub static CELL_MSRPM: Bitmap<MSRPM_SIZE> = Bitmap(UnsafeCell::new([0; MSRPM_SIZE]));

/// The root cell's MSR permissions in VMX's layout (from [`MSRPM`], at boot).
pub static VMX_MSR_BITMAP: Bitmap<VMX_MSR_BITMAP_SIZE> =
    Bitmap(UnsafeCell::new([0; VMX_MSR_BITMAP_SIZE]));
/// Every other cell's, in VMX's layout (from [`CELL_MSRPM`], at boot).
pub static VMX_CELL_MSR_BITMAP: Bitmap<VMX_MSR_BITMAP_SIZE> =
    Bitmap(UnsafeCell::new([0; VMX_MSR_BITMAP_SIZE]));

/// Each cell slot's I/O permission map: every port exits but the cell's own.
static CELL_IOPM: [Bitmap<IOPM_SIZE>; cellvisor_core::MAX_CELLS] =
    [const { Bitmap(UnsafeCell::new([0; IOPM_SIZE])) }; cellvisor_core::MAX_CELLS];

/// Whether [`CELL_IOPM`] of the slot was filled (every port exits) once.
static CELL_IOPM_READY: [AtomicBool; cellvisor_core::MAX_CELLS] =
    [const { AtomicBool::new(false) }; cellvisor_core::MAX_CELLS];

/// Cell slot `cell`'s I/O permission map, every port exiting if it was never used.
pub fn cell_iopm(cell: CellId) -> Option<&'static Bitmap<IOPM_SIZE>> {
    let index = cell.0 as usize;
    let (map, ready) = (CELL_IOPM.get(index)?, CELL_IOPM_READY.get(index)?);
    if !ready.load(Ordering::Acquire) {
        // SAFETY: no vCPU of the slot runs before the map is ready; two CPUs filling it at
        // once write the same bytes.
        unsafe { (*map.0.get()).fill(0xff) };
        ready.store(true, Ordering::Release);
    }
    Some(map)
}

/// Cell `cell`'s I/O permission map after ports moved to it (`to_cell`) or back.
/// Called by the core under its management lock, before the cell runs or after it stopped.
pub fn move_cell_ports(cell: CellId, base: u32, count: u32, to_cell: bool) {
    let Some(map) = cell_iopm(cell) else { return };
    // SAFETY: the management lock's holder is the only writer; the cell runs no vCPU while
    // it is created or destroyed.
    let map = unsafe { &mut *map.0.get() };
    if to_cell {
        crate::permission::pass_ports(map, base, count);
    } else {
        for port in base..base.saturating_add(count).min(0x1_0000) {
            intercept_ports(map, port as u16, 1);
        }
    }
}

/// Whether the root cell's accesses to `port` exit whoever owns it: the PM1a control port
/// `power` (the root cell's power-off is reported) and the PCI configuration ports.
pub fn always_trapped(port: u32, power: Option<u16>) -> bool {
    let (first, last) = crate::pci::PORTS;
    (u32::from(first)..=u32::from(last)).contains(&port)
        || power.is_some_and(|p| (u32::from(p)..u32::from(p) + 2).contains(&port))
}

/// The root cell's I/O permission map after ports moved: ports a cell took exit for the root
/// cell, ports it gave back no longer do (unless they always exit, [`always_trapped`]).
/// Called by the core under its management lock, the only writer after boot.
pub fn move_root_ports(base: u32, count: u32, to_root: bool) {
    let power = u16::try_from(POWER_PORT.load(Ordering::Acquire)).ok();
    // SAFETY: the management lock's holder is the only writer; root-cell CPUs' accesses
    // read the map in hardware, and see each bit before or after the change, both of which
    // are safe for the root cell (a port not yet or no longer its reads as all ones).
    let iopm = unsafe { &mut *IOPM.0.get() };
    for port in base..base.saturating_add(count).min(0x1_0000) {
        if to_root && !always_trapped(port, power) {
            crate::permission::pass_ports(iopm, port, 1);
        } else {
            intercept_ports(iopm, port as u16, 1);
        }
    }
}
