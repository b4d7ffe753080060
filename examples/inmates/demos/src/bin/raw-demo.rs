//! `raw-demo`: a test binary for `cellvisor cell linux --raw`, which enters it at its first
//! byte like a Linux kernel, with x0 = the cell's device tree. It uses nothing but that
//! tree (no communication region):
//!
//! 1. it reads the tree in x0: its UART (the console), GIC, CPUs, PSCI conduit, RAM and
//!    virtual timer;
//! 2. PSCI: PSCI_VERSION; CPU_ON of its other CPU at a function that reports and calls
//!    CPU_OFF; AFFINITY_INFO until that CPU is off; CPU_ON of a CPU the tree does not list
//!    (refused);
//! 3. the GIC: 20 virtual-timer interrupts, 5 ms apart;
//! 4. the first boot ends with PSCI SYSTEM_RESET, which restarts the cell with its memory
//!    kept: the second boot finds its boot count raised and ends with SYSTEM_OFF.
//!
//! Each step prints one `raw-demo:` line on the cell's UART; the system test checks them.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod demo {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use cellvisor_inmate::psci::{self, AffinityState, Conduit, Error};
    use cellvisor_inmate::ticker::Ticker;
    use cellvisor_inmate::tree::Machine;
    use cellvisor_inmate::{boot_argument, park, println, sysreg, timer, Platform};

    cellvisor_inmate::entry!(main);

    /// Boots so far, kept in `.data` across SYSTEM_RESET (the cell's memory is not
    /// reloaded; `.bss` is zeroed again, `.data` is not). 0 on the first boot.
    static BOOTS: AtomicU32 = AtomicU32::new(BOOT_MARK);
    /// `BOOTS` as loaded: a value with bits in both halves, so that it lands in `.data`.
    const BOOT_MARK: u32 = 0x5eed_0000;
    /// The second CPU's report: its MPIDR (0: not yet), and the argument it got.
    static SECONDARY_MPIDR: AtomicU64 = AtomicU64::new(0);
    static SECONDARY_ARGUMENT: AtomicU64 = AtomicU64::new(0);
    /// What `CPU_ON` gives the second CPU.
    const ARGUMENT: u64 = 0xc0ff_ee00;
    /// The timer ticks to count, and their period.
    const TICKS: u32 = 20;
    const TICK_NS: u64 = 5_000_000;

    fn main(platform: &Platform) -> ! {
        let boot = BOOTS.load(Ordering::Relaxed).wrapping_sub(BOOT_MARK) + 1;
        BOOTS.store(BOOT_MARK + boot, Ordering::Relaxed);
        let tree = boot_argument();
        // SAFETY: the runtime read the same tree for the platform already; x0 holds the
        // address `cellvisor cell linux` put it at, in the cell's RAM.
        let machine = match unsafe { Machine::at(tree) } {
            Ok(machine) => machine,
            Err(error) => {
                println!("raw-demo: no device tree in x0 ({tree:#x}): {error}");
                park();
            }
        };
        let me = sysreg::mpidr_el1() & 0xff_00ff_ffff;
        println!(
            "raw-demo: boot {boot}: device tree in x0 at {tree:#x}, {} bytes",
            machine.size
        );
        println!(
            "raw-demo: tree: {} CPUs {:x?} (this one {me:#x}), {:?}, GICv{} distributor {:#x}, RAM {:x?}, virtual timer INTID {:?}",
            machine.cpus().len(),
            machine.cpus(),
            machine.psci,
            platform.gic_version.get(),
            platform.gicd.get(),
            machine.memory,
            machine.virtual_timer,
        );
        let Some(conduit) = machine.psci else {
            println!("raw-demo: the tree has no PSCI");
            park();
        };

        // PSCI.
        match psci::version(conduit) {
            Ok(version) => println!("raw-demo: PSCI version {version}"),
            Err(error) => println!("raw-demo: PSCI_VERSION failed: {error}"),
        }
        match machine.cpus().iter().find(|&&cpu| cpu != me) {
            Some(&other) => cpu_on_and_off(conduit, other),
            None => println!("raw-demo: no second CPU in the tree"),
        }
        let stranger = machine.cpus().iter().max().map_or(0, |&m| m + 1);
        let refused = psci::start_cpu(conduit, stranger, secondary, 0);
        println!(
            "raw-demo: CPU_ON of CPU {stranger:#x}, not in the tree: {refused:?} ({})",
            if matches!(refused, Err(Error::InvalidParameters | Error::Denied)) {
                "refused"
            } else {
                "NOT REFUSED"
            }
        );

        // The GIC.
        let (mut ticker, setup) = Ticker::start(platform, TICK_NS);
        match setup {
            Ok(()) => {
                let start = timer::counter();
                for _ in 0..TICKS {
                    ticker.wait();
                }
                let ms =
                    timer::ticks_to_ns(timer::counter() - start, timer::frequency()) / 1_000_000;
                println!(
                    "raw-demo: {TICKS} virtual timer interrupts through the GICv{} in {ms} ms",
                    platform.gic_version.get()
                );
            }
            Err(error) => println!("raw-demo: no GIC: {error:?}"),
        }

        if boot == 1 {
            println!("raw-demo: boot 1 done: SYSTEM_RESET");
            cellvisor_inmate::console::flush();
            let error = psci::system_reset(conduit);
            println!("raw-demo: SYSTEM_RESET returned: {error}");
        } else {
            println!("raw-demo: boot {boot} done: SYSTEM_OFF");
            cellvisor_inmate::console::flush();
            let error = psci::system_off(conduit);
            println!("raw-demo: SYSTEM_OFF returned: {error}");
        }
        park()
    }

    /// Starts CPU `other` at [`secondary`], waits for its report, then for AFFINITY_INFO to
    /// say it is off again.
    fn cpu_on_and_off(conduit: Conduit, other: u64) {
        SECONDARY_MPIDR.store(0, Ordering::Relaxed);
        SMC.store(u32::from(conduit == Conduit::Smc), Ordering::Relaxed);
        if let Err(error) = psci::start_cpu(conduit, other, secondary, ARGUMENT) {
            println!("raw-demo: CPU_ON of CPU {other:#x} failed: {error}");
            return;
        }
        let deadline = timer::counter() + timer::frequency();
        let reported = timer::wait_until(deadline, || {
            let mpidr = SECONDARY_MPIDR.load(Ordering::Relaxed);
            (mpidr != 0).then_some(mpidr)
        });
        let Some(mpidr) = reported else {
            println!("raw-demo: CPU {other:#x} did not report within a second");
            return;
        };
        let off = timer::wait_until(deadline, || {
            (psci::affinity_info(conduit, other) == Ok(AffinityState::Off)).then_some(())
        });
        println!(
            "raw-demo: CPU_ON: CPU {:#x} ran with x0 = {:#x}, then CPU_OFF; AFFINITY_INFO {}",
            mpidr & !(1 << 31),
            SECONDARY_ARGUMENT.load(Ordering::Relaxed),
            if off.is_some() { "off" } else { "NOT OFF" }
        );
    }

    /// The second CPU: reports its MPIDR and argument, then switches itself off.
    extern "C" fn secondary(argument: u64) -> ! {
        SECONDARY_ARGUMENT.store(argument, Ordering::Relaxed);
        // Bit 31 of MPIDR_EL1 is RES1: never 0.
        SECONDARY_MPIDR.store(
            sysreg::mpidr_el1() & 0xff_00ff_ffff | 1 << 31,
            Ordering::Relaxed,
        );
        let conduit = if SMC.load(Ordering::Relaxed) != 0 {
            Conduit::Smc
        } else {
            Conduit::Hvc
        };
        psci::cpu_off(conduit);
        park()
    }

    /// Whether the tree's conduit is SMC, for the second CPU.
    static SMC: AtomicU32 = AtomicU32::new(0);
}

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
