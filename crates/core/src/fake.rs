//! A fake architecture for host tests, fuzzing and benchmarks (feature `fake`): threads are
//! CPUs, physical memory is a sparse map of pages, and every call the core makes is logged so
//! that a test can check what the machine was asked to do.
//!
//! - [`FakeArch::set_cpu`] names the CPU the calling thread is (the test's main thread is
//!   CPU 0 unless it says otherwise).
//! - [`run_cpu`] is the life of one fake CPU: it parks, enters what the core gives it, runs
//!   "guest code" (sleeps) until it is told to stop, and parks again, for as long as the test
//!   runs. [`FakeArch::set_deaf`] makes a CPU ignore stop requests (a CPU that does not
//!   answer), [`FakeArch::set_violation`] makes it break the rules once it runs.
//! - [`FakeArch::fail_irq_moves`] and a small table pool make machine steps fail, to test
//!   rollback; [`FakeArch::set_activation_delay`] keeps a CPU entering a cell for a while.

use crate::arch::{Cpus, InterruptChip, IoPorts, Memory, Output, PciFunctions, Translation, Vcpus};
use crate::{Hypervisor, Verdict, MAX_CPUS};
use cellvisor_abi::comm;
use cellvisor_cell::CellId;
use cellvisor_paging::{Descriptor, GuestPhysAddr, Mapping, PhysAddr, PhysMemory, Stage2};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::boxed::Box;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::string::String;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use std::vec::Vec;

const PAGE: u64 = 4096;

std::thread_local! {
    static CPU: Cell<usize> = const { Cell::new(0) };
}

/// Sparse physical memory: pages appear, zeroed, when first touched.
#[derive(Debug, Default)]
pub struct FakePhys {
    pages: Mutex<BTreeMap<u64, Box<[u8; PAGE as usize]>>>,
}

impl FakePhys {
    /// Copies `out.len()` bytes from physical address `at` (untouched pages read as zero
    /// and stay untouched).
    pub fn read(&self, at: u64, out: &mut [u8]) {
        let pages = self.pages.lock().unwrap();
        let mut done = 0usize;
        while done < out.len() {
            let address = at + done as u64;
            let (page, offset) = (address / PAGE, (address % PAGE) as usize);
            let n = (PAGE as usize - offset).min(out.len() - done);
            match pages.get(&page) {
                Some(frame) => out[done..done + n].copy_from_slice(&frame[offset..offset + n]),
                None => out[done..done + n].fill(0),
            }
            done += n;
        }
    }

    /// Copies `bytes` to physical address `at` (zeros into an untouched page leave it
    /// untouched).
    pub fn write(&self, at: u64, bytes: &[u8]) {
        let mut pages = self.pages.lock().unwrap();
        let mut done = 0usize;
        while done < bytes.len() {
            let address = at + done as u64;
            let (page, offset) = (address / PAGE, (address % PAGE) as usize);
            let n = (PAGE as usize - offset).min(bytes.len() - done);
            let chunk = &bytes[done..done + n];
            if let Some(frame) = pages.get_mut(&page) {
                frame[offset..offset + n].copy_from_slice(chunk);
            } else if chunk.iter().any(|&b| b != 0) {
                let mut frame = Box::new([0; PAGE as usize]);
                frame[offset..offset + n].copy_from_slice(chunk);
                pages.insert(page, frame);
            }
            done += n;
        }
    }

    /// Sets `[at, at + len)` to zero: whole pages are dropped (zeroing a cell's gigabyte of
    /// RAM costs no gigabyte here, and no time for pages never touched).
    pub fn zero(&self, at: u64, len: u64) {
        let end = at.saturating_add(len);
        if end <= at {
            return;
        }
        let mut pages = self.pages.lock().unwrap();
        // The pages at either end keep their bytes outside the range.
        for page in [at / PAGE, (end - 1) / PAGE] {
            if let Some(frame) = pages.get_mut(&page) {
                let base = page * PAGE;
                let to = end.min(base.saturating_add(PAGE)) - base;
                frame[(at.max(base) - base) as usize..to as usize].fill(0);
            }
        }
        // The whole pages go.
        let (first, after) = (at.div_ceil(PAGE), end / PAGE);
        let mut whole = pages.split_off(&first);
        let mut rest = whole.split_off(&after.max(first));
        pages.append(&mut rest);
    }

    /// Pages that were written with something other than zeros.
    pub fn pages(&self) -> usize {
        self.pages.lock().unwrap().len()
    }

    /// Whether every byte of `[at, at + len)` is zero (untouched pages are).
    pub fn is_zero(&self, at: u64, len: u64) -> bool {
        let pages = self.pages.lock().unwrap();
        (at / PAGE..(at + len).div_ceil(PAGE)).all(|page| {
            pages.get(&page).is_none_or(|frame| {
                let start = if page == at / PAGE {
                    (at % PAGE) as usize
                } else {
                    0
                };
                let end = if page == (at + len - 1) / PAGE {
                    ((at + len - 1) % PAGE) as usize + 1
                } else {
                    PAGE as usize
                };
                frame[start..end].iter().all(|&b| b == 0)
            })
        })
    }
}

/// The fake's table accessor: descriptors in [`FakePhys`].
#[derive(Debug, Clone)]
pub struct FakeTables(Arc<FakePhys>);

impl PhysMemory for FakeTables {
    fn read_descriptor(&self, table: PhysAddr, index: usize) -> Descriptor {
        let mut bytes = [0u8; 8];
        self.0.read(table.as_u64() + index as u64 * 8, &mut bytes);
        Descriptor::from_bits(u64::from_le_bytes(bytes))
    }

    fn write_descriptor(&mut self, table: PhysAddr, index: usize, value: Descriptor) {
        self.0.write(
            table.as_u64() + index as u64 * 8,
            &value.bits().to_le_bytes(),
        );
    }
}

/// What the core asked the fake machine to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// [`InterruptChip::move_irqs`].
    MoveIrqs {
        /// Old owner.
        from: u32,
        /// New owner.
        to: u32,
        /// Lines.
        irqs: Vec<u32>,
    },
    /// [`IoPorts::move_ports`].
    MovePorts {
        /// Old owner.
        from: u32,
        /// New owner.
        to: u32,
        /// First port.
        base: u32,
        /// Ports.
        count: u32,
    },
    /// [`PciFunctions::move_pci`].
    MovePci {
        /// Old owner.
        from: u32,
        /// New owner.
        to: u32,
        /// The function.
        device: cellvisor_config::PciAddress,
    },
    /// [`Translation::flush_cell`].
    FlushCell(u32),
    /// [`Vcpus::retire`].
    Retire(usize),
    /// [`Vcpus::activate`].
    Activate {
        /// CPU.
        cpu: usize,
        /// Cell.
        cell: u32,
        /// Root of its tables.
        tables: u64,
    },
    /// [`run_cpu`] entered a vCPU.
    Enter {
        /// CPU.
        cpu: usize,
        /// What it entered.
        entry: crate::Entry,
    },
    /// [`run_cpu`] reset its cell ([`FakeArch::set_reset`]).
    Reset {
        /// CPU.
        cpu: usize,
        /// What the reset did.
        restart: crate::Restart,
    },
}

struct Wake {
    pending: Mutex<bool>,
    signal: Condvar,
}

/// A fake architecture; see the [module documentation](self).
pub struct FakeArch {
    phys: Arc<FakePhys>,
    start: Instant,
    wakes: Vec<Wake>,
    quit: AtomicBool,
    deaf: AtomicU64,
    violation: AtomicU64,
    reset: AtomicU64,
    failing_irq: AtomicU32,
    activation_delay: AtomicU64,
    events: Mutex<Vec<Event>>,
    output: Mutex<String>,
    lock: Mutex<()>,
    /// Root flushes, counted (not logged: there are many).
    root_flushes: AtomicU64,
    /// [`CellStart::FirstCpu`](crate::arch::CellStart) instead of `AllCpus`.
    first_cpu_start: AtomicBool,
}

impl core::fmt::Debug for FakeArch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FakeArch").finish_non_exhaustive()
    }
}

impl Default for FakeArch {
    fn default() -> Self {
        Self::new()
    }
}

/// The fake's counter frequency: nanoseconds.
pub const FREQUENCY: u64 = 1_000_000_000;

/// Where the tests and the fuzz target put the table frames: inside the hypervisor memory
/// of QEMU `virt`'s system configuration (`platforms/qemu-arm64/config/system-gicv3.toml`).
pub const FRAMES: u64 = 0x4030_0000;
/// CPUs of the machine the tests and the fuzz target boot.
pub const CPUS: usize = 4;
/// The management interface the tests and the fuzz target boot with: the control page and
/// a 2 MiB data window at the end of the QEMU system's hypervisor memory.
pub const INTERFACE: crate::Interface = crate::Interface {
    control: 0x407f_f000,
    data: 0x4080_0000,
    data_size: 0x20_0000,
    memory_total: 8 << 20,
    image: 1 << 20,
    cpus: CPUS as u32,
};

impl FakeArch {
    /// A fake machine with [`MAX_CPUS`] CPUs and empty memory.
    pub fn new() -> Self {
        Self {
            phys: Arc::new(FakePhys::default()),
            start: Instant::now(),
            wakes: (0..MAX_CPUS)
                .map(|_| Wake {
                    pending: Mutex::new(false),
                    signal: Condvar::new(),
                })
                .collect(),
            quit: AtomicBool::new(false),
            deaf: AtomicU64::new(0),
            violation: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            failing_irq: AtomicU32::new(u32::MAX),
            activation_delay: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
            output: Mutex::new(String::new()),
            lock: Mutex::new(()),
            root_flushes: AtomicU64::new(0),
            first_cpu_start: AtomicBool::new(false),
        }
    }

    /// Starts only a cell's first CPU, the others powered on by the cell (`true`, x86's
    /// way), or all of them (`false`, the default).
    pub fn set_first_cpu_start(&self, first: bool) {
        self.first_cpu_start.store(first, Ordering::SeqCst);
    }

    /// The calling thread is CPU `cpu` from now on.
    pub fn set_cpu(cpu: usize) {
        CPU.with(|c| c.set(cpu));
    }

    /// Physical memory.
    pub fn phys(&self) -> &FakePhys {
        &self.phys
    }

    /// Makes CPU `cpu` ignore stop requests (`true`) or answer them again.
    pub fn set_deaf(&self, cpu: usize, deaf: bool) {
        if deaf {
            self.deaf.fetch_or(1 << cpu, Ordering::SeqCst);
        } else {
            self.deaf.fetch_and(!(1 << cpu), Ordering::SeqCst);
        }
        self.kick(cpu);
    }

    /// Makes CPU `cpu` break the rules once, the next time it runs a vCPU.
    pub fn set_violation(&self, cpu: usize) {
        self.violation.fetch_or(1 << cpu, Ordering::SeqCst);
        self.kick(cpu);
    }

    /// Makes CPU `cpu` reset its cell once ([`Hypervisor::restart_cell_from_inside`], Arm's
    /// PSCI SYSTEM_RESET), the next time it runs a vCPU.
    pub fn set_reset(&self, cpu: usize) {
        self.reset.fetch_or(1 << cpu, Ordering::SeqCst);
        self.kick(cpu);
    }

    /// Makes every move of interrupt line `irq` fail (`u32::MAX`: none).
    pub fn fail_irq_moves(&self, irq: u32) {
        self.failing_irq.store(irq, Ordering::SeqCst);
    }

    /// Makes every [`Vcpus::activate`] take `millis` milliseconds after it logged its
    /// event: a CPU that is still entering a cell, for tests of what other CPUs see then.
    pub fn set_activation_delay(&self, millis: u64) {
        self.activation_delay.store(millis, Ordering::SeqCst);
    }

    /// Ends every wait: the CPU threads of [`run_cpu`] return.
    pub fn quit(&self) {
        self.quit.store(true, Ordering::SeqCst);
        for cpu in 0..MAX_CPUS {
            self.kick(cpu);
        }
    }

    /// Whether [`quit`](Self::quit) was called.
    pub fn quitting(&self) -> bool {
        self.quit.load(Ordering::SeqCst)
    }

    /// Takes the events logged so far.
    pub fn take_events(&self) -> Vec<Event> {
        core::mem::take(&mut self.events.lock().unwrap())
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// How often the root cell's cached translations were dropped.
    pub fn root_flushes(&self) -> u64 {
        self.root_flushes.load(Ordering::SeqCst)
    }

    fn log(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

impl Cpus for FakeArch {
    fn cpu_index(&self) -> usize {
        CPU.with(Cell::get)
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    fn frequency(&self) -> u64 {
        FREQUENCY
    }

    fn kick(&self, cpu: usize) {
        if let Some(wake) = self.wakes.get(cpu) {
            *wake.pending.lock().unwrap() = true;
            wake.signal.notify_all();
        }
    }

    fn wait_until(&self, deadline: Option<u64>, done: &mut dyn FnMut() -> bool) -> bool {
        let wake = &self.wakes[self.cpu_index().min(MAX_CPUS - 1)];
        loop {
            if done() {
                return true;
            }
            if self.quitting() || deadline.is_some_and(|d| self.now() >= d) {
                return false;
            }
            let pending = wake.pending.lock().unwrap();
            // A short timeout on top of the kicks: the fake tolerates a lost wake-up, so
            // a test that hangs shows a core bug, not a fake one.
            let (mut pending, _) = wake
                .signal
                .wait_timeout_while(pending, Duration::from_millis(2), |p| !*p)
                .unwrap();
            *pending = false;
        }
    }
}

impl Memory for FakeArch {
    fn read(&self, from: PhysAddr, out: &mut [u8]) {
        self.phys.read(from.as_u64(), out);
    }

    fn write(&self, to: PhysAddr, bytes: &[u8]) {
        self.phys.write(to.as_u64(), bytes);
    }

    fn fill(&self, to: PhysAddr, byte: u8, len: u64) {
        if byte == 0 {
            return self.phys.zero(to.as_u64(), len);
        }
        let chunk = [byte; PAGE as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(PAGE);
            self.phys.write(to.as_u64() + done, &chunk[..n as usize]);
            done += n;
        }
    }

    fn copy(&self, to: PhysAddr, from: PhysAddr, len: u64) {
        let mut chunk = [0u8; PAGE as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(PAGE) as usize;
            self.phys.read(from.as_u64() + done, &mut chunk[..n]);
            self.phys.write(to.as_u64() + done, &chunk[..n]);
            done += n as u64;
        }
    }

    fn read_u32(&self, at: PhysAddr) -> u32 {
        let mut bytes = [0u8; 4];
        self.phys.read(at.as_u64(), &mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn write_u32(&self, at: PhysAddr, value: u32) {
        self.phys.write(at.as_u64(), &value.to_le_bytes());
    }

    fn clean(&self, _at: PhysAddr, _len: u64) {}
}

impl Translation for FakeArch {
    type Format = Stage2;
    type Tables = FakeTables;

    fn table_memory(&self) -> FakeTables {
        FakeTables(Arc::clone(&self.phys))
    }

    fn flush_root(&self) {
        self.root_flushes.fetch_add(1, Ordering::SeqCst);
    }

    fn flush_cell(&self, cell: CellId) {
        self.log(Event::FlushCell(cell.0));
    }
}

impl Vcpus for FakeArch {
    fn cell_start(&self) -> crate::arch::CellStart {
        if self.first_cpu_start.load(Ordering::SeqCst) {
            crate::arch::CellStart::FirstCpu
        } else {
            crate::arch::CellStart::AllCpus
        }
    }

    fn retire(&self, cpu: usize) {
        self.log(Event::Retire(cpu));
    }

    fn activate(&self, cpu: usize, cell: CellId, tables: PhysAddr) {
        self.log(Event::Activate {
            cpu,
            cell: cell.0,
            tables: tables.as_u64(),
        });
        let delay = self.activation_delay.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
    }
}

impl PciFunctions for FakeArch {
    fn move_pci(
        &self,
        from: CellId,
        to: CellId,
        device: cellvisor_config::PciAddress,
    ) -> Result<(), &'static str> {
        self.log(Event::MovePci {
            from: from.0,
            to: to.0,
            device,
        });
        Ok(())
    }
}

impl IoPorts for FakeArch {
    fn move_ports(
        &self,
        from: CellId,
        to: CellId,
        base: u32,
        count: u32,
    ) -> Result<(), &'static str> {
        self.log(Event::MovePorts {
            from: from.0,
            to: to.0,
            base,
            count,
        });
        Ok(())
    }
}

impl InterruptChip for FakeArch {
    fn move_irqs(&self, from: CellId, to: CellId, irqs: &[u32]) -> Result<(), &'static str> {
        let failing = self.failing_irq.load(Ordering::SeqCst);
        if irqs.contains(&failing) {
            return Err("the fake refuses this line");
        }
        self.log(Event::MoveIrqs {
            from: from.0,
            to: to.0,
            irqs: irqs.to_vec(),
        });
        Ok(())
    }

    fn cell_window(&self) -> Option<Mapping<GuestPhysAddr>> {
        None
    }

    fn platform(&self, cpus: u64, console: (u32, u64)) -> comm::Platform {
        comm::Platform {
            gic_version: comm::GIC_V3.into(),
            uart_kind: console.0.into(),
            gicd: 0x0800_0000.into(),
            gicr_or_gicc: 0x080a_0000.into(),
            uart: console.1.into(),
            timer_frequency: FREQUENCY.into(),
            cpus: cpus.count_ones().into(),
            reserved: 0.into(),
        }
    }
}

impl Output for FakeArch {
    fn print(&self, args: core::fmt::Arguments<'_>) {
        let _guard = self.lock.lock().unwrap();
        let mut text = String::new();
        let _ = core::fmt::Write::write_fmt(&mut text, args);
        self.output.lock().unwrap().push_str(&text);
    }

    fn exclusive(&self, f: &mut dyn FnMut()) {
        let _guard = self.lock.lock().unwrap();
        f();
    }
}

/// Boots `hv` as an architecture does: the root cell's tables in Arm stage-2 format (40-bit
/// IPA) from `frames` table frames at `frame_base`, CPUs `0..cpus` for the root cell, the
/// management interface at `interface` (its data window identity mapped into the root
/// cell); the calling thread becomes CPU 0, running the root cell. The caller starts the
/// other CPUs with [`run_cpu`].
pub fn boot(
    hv: &Hypervisor<FakeArch>,
    system: &'static cellvisor_config::SystemConfigView<'static>,
    frame_base: PhysAddr,
    frames: usize,
    cpus: usize,
    interface: crate::Interface,
) -> Result<crate::RootTables, crate::MachineError> {
    let root = hv.install_root(
        system,
        Stage2::new(40).map_err(|_| crate::MachineError::NoMemory)?,
        frame_base,
        frames,
        (1u64 << cpus.min(63)) - 1,
        Some((interface.data, interface.data_size)),
    )?;
    hv.init_management(interface, system)
        .map_err(|_| crate::MachineError::NoMemory)?;
    FakeArch::set_cpu(0);
    hv.cpu(0).power.set_on();
    Ok(root)
}

/// The life of fake CPU `cpu` until the test calls [`FakeArch::quit`]: park, enter, run
/// until stopped (or until a [`FakeArch::set_violation`] stops the cell, or a
/// [`FakeArch::set_reset`] resets it), park again.
pub fn run_cpu(hv: &Hypervisor<FakeArch>, cpu: usize) {
    FakeArch::set_cpu(cpu);
    let arch = hv.arch();
    'parked: while let Some(entry) = hv.park(cpu) {
        arch.log(Event::Enter { cpu, entry });
        loop {
            if arch.quitting() {
                return;
            }
            let deaf = arch.deaf.load(Ordering::SeqCst) & 1 << cpu != 0;
            if !deaf && hv.take_stop(cpu) {
                continue 'parked;
            }
            if arch.violation.fetch_and(!(1 << cpu), Ordering::SeqCst) & 1 << cpu != 0
                && hv.violation(cpu) == Verdict::StopCell
            {
                continue 'parked;
            }
            if arch.reset.fetch_and(!(1 << cpu), Ordering::SeqCst) & 1 << cpu != 0 {
                let restart = hv.restart_cell_from_inside(cpu);
                arch.log(Event::Reset { cpu, restart });
                continue 'parked;
            }
            let deadline = hv.deadline_in(5);
            arch.wait_until(Some(deadline), &mut || {
                arch.quitting()
                    || (hv.stop_requested(cpu) && arch.deaf.load(Ordering::SeqCst) & 1 << cpu == 0)
                    || arch.violation.load(Ordering::SeqCst) & 1 << cpu != 0
                    || arch.reset.load(Ordering::SeqCst) & 1 << cpu != 0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_holds_only_pages_with_data() {
        let phys = FakePhys::default();
        let mut out = [1u8; 10];
        phys.read(0x1ffb, &mut out);
        assert_eq!((out, phys.pages()), ([0; 10], 0), "reads create nothing");
        phys.write(0x5000, &[0; 100]);
        assert_eq!(phys.pages(), 0, "nor do zeros");
        phys.write(0x1ffe, &[1, 2, 3, 4]);
        assert_eq!(phys.pages(), 2);
        phys.read(0x1ffb, &mut out);
        assert_eq!(out, [0, 0, 0, 1, 2, 3, 4, 0, 0, 0]);
        // Within a page; across the page boundary, both pages partly.
        phys.zero(0x1fff, 1);
        phys.read(0x1ffe, &mut out[..4]);
        assert_eq!(out[..4], [1, 0, 3, 4]);
        phys.zero(0x1ffe, 3);
        phys.read(0x1ffe, &mut out[..4]);
        assert_eq!(out[..4], [0, 0, 0, 4]);
        assert_eq!(phys.pages(), 2);
        // Whole pages go; the page at each end keeps its bytes outside the range.
        phys.write(0x3000, &[7; 0x3000]);
        assert_eq!(phys.pages(), 5);
        phys.zero(0x2002, 0x3ffd);
        assert_eq!(phys.pages(), 3, "pages 3 and 4 dropped");
        phys.read(0x1fff, &mut out[..4]);
        assert_eq!(out[..4], [0, 0, 4, 0]);
        phys.read(0x5ffe, &mut out[..2]);
        assert_eq!(out[..2], [0, 7]);
        assert!(phys.is_zero(0x2002, 0x3ffd));
        phys.zero(u64::MAX - 10, 100);
        phys.zero(0, 0);
        assert_eq!(phys.pages(), 3);
    }
}
