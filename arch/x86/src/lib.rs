//! # cellvisor-x86
//!
//! The x86-64 backend of cellvisor: the Multiboot entry into long mode (`boot`), the serial
//! console ([`serial`]), the choice of virtualization extension by CPUID ([`cpu`]), the other
//! CPUs (`smp`), Debian's amd64 kernel as the root cell on every CPU under AMD SVM
//! ([`svm`]) or Intel VMX (`vmcs`) (`loader`, `root_linux`), and cells with their own CPUs,
//! I/O ports, interrupts and PCI functions ([`guest`], [`permission`], [`pci`]), over
//! `cellvisor-core` (`hv`): the tables of every cell and the management interface are the
//! core's. The modules named without a link exist only in the bare-metal build
//! (`x86_64-unknown-none`); the rest are host-tested.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(target_os = "none", no_std)]
#![deny(missing_docs)]

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod boot;
pub mod cmdline;
#[cfg(target_arch = "x86_64")]
pub mod cpu;
pub mod decode;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod exception;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod firmware;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
mod first_guest;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
mod first_vmx_guest;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod gdt;
/// What the exit handlers need of a vCPU, on SVM and VMX alike.
pub mod guest;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod hv;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod ioapic;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod iomap;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod loader;
#[cfg(target_arch = "x86_64")]
pub mod page;
pub mod pci;
pub mod permission;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod root_linux;
#[cfg(target_arch = "x86_64")]
pub mod serial;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod smp;
pub mod stage2;
#[cfg(target_arch = "x86_64")]
pub mod svm;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod vmcs;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod vmx;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod wait;
pub mod walk;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod xapic;

/// What a board tells the backend.
#[derive(Clone, Copy, Debug)]
pub struct Board {
    /// The board's name, for the banner.
    pub name: &'static str,
    /// The hypervisor's version, for the banner.
    pub version: &'static str,
    /// The console UART's I/O port base.
    pub uart_port: u16,
}

// The board, set by `board!` in the board crate.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
extern "Rust" {
    fn cellvisor_x86_board() -> &'static Board;
}

/// The boot CPU's first Rust: prints the banner and what the CPU offers, then stops (the
/// rest of the hypervisor is to come).
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
extern "C" fn rust_entry(magic: u32, info: u32) -> ! {
    use core::fmt::Write as _;
    // SAFETY: defined by `board!` in the board crate, which every image links.
    let board = unsafe { cellvisor_x86_board() };
    let mut console = serial::Serial::new(board.uart_port);
    exception::init();
    smp::mark_stack(0);
    exception::load();
    let _ = writeln!(
        console,
        "cellvisor {} on {} (x86-64), Multiboot {}, information at {info:#x}",
        board.version,
        board.name,
        if magic == boot::MULTIBOOT_LOADER_MAGIC {
            "ok"
        } else {
            "magic wrong"
        }
    );
    let (vendor, extension) = cpu::probe();
    match extension {
        Some(extension) => {
            let _ = writeln!(console, "cellvisor: CPU {vendor}: {extension}");
            if extension
                == (cpu::Extension::Svm {
                    nested_paging: true,
                })
            {
                first_guest::run(&mut console);
            }
            if extension == (cpu::Extension::Vmx { ept: true }) {
                // VMX needs a host TR: the hypervisor's GDT with a TSS.
                gdt::load();
                hv::use_vmx(true);
                first_vmx_guest::run(&mut console);
            }
        }
        None => {
            let _ = writeln!(
                console,
                "cellvisor: CPU {vendor} has neither SVM nor VMX: cannot run"
            );
        }
    }
    let mut apic_ids = heapless::Vec::<u32, { firmware::MAX_CPUS }>::new();
    match firmware::cpus() {
        Ok((ids, left_out)) => {
            // Hypervisor CPU numbers: the boot CPU is 0, the others follow in the MADT's
            // order (the order `smp::start` numbers them in).
            let boot = smp::apic_id();
            let _ = apic_ids.push(boot);
            for &id in ids.iter().filter(|&&id| id != boot) {
                let _ = apic_ids.push(id);
            }
            hv::set_apic_ids(&apic_ids);
            let tsc = hv::calibrate();
            let _ = writeln!(console, "cellvisor: TSC at {} kHz", tsc / 1000);
            let started = smp::start(&ids, ap_entry);
            let _guard = lock_console();
            let _ = writeln!(
                console,
                "cellvisor {} on {}: {}/{} CPUs in long mode",
                board.version,
                board.name,
                started + 1,
                ids.len() + left_out
            );
            if left_out > 0 {
                let _ = writeln!(
                    console,
                    "cellvisor: {left_out} CPUs left out: at most {} are supported",
                    firmware::MAX_CPUS
                );
            }
        }
        Err(e) => {
            let _ = writeln!(console, "cellvisor: cannot find the other CPUs: {e}");
        }
    }
    #[cfg(feature = "fault-injection")]
    {
        // An unmapped address (the boot map ends at 4 GiB): the page fault must be reported
        // with its address, and this CPU parked.
        let _ = writeln!(console, "cellvisor: fault injection: reading 0x1dead0000");
        // SAFETY: deliberately not: the read faults, and the handler never returns.
        let value = unsafe { (0x1_dead_0000 as *const u64).read_volatile() };
        let _ = writeln!(
            console,
            "cellvisor: fault injection: read {value:#x}, no fault"
        );
    }
    let usable = extension
        == Some(cpu::Extension::Svm {
            nested_paging: true,
        })
        || extension == Some(cpu::Extension::Vmx { ept: true });
    match loader::read(info) {
        Ok(handoff) if handoff.kernel.is_some() && usable => {
            root_linux::run(&mut console, &handoff, &apic_ids);
        }
        Ok(handoff) if handoff.kernel.is_some() => {
            let _ = writeln!(
                console,
                "cellvisor: the root cell needs SVM with nested paging or VMX with EPT"
            );
        }
        Ok(_) => {}
        Err(e) => {
            let _ = writeln!(console, "cellvisor: {e}");
        }
    }
    let _guard = lock_console();
    let _ = writeln!(console, "cellvisor: the x86 backend stops here for now");
    halt()
}

/// The console, as the boot CPU set it up.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
fn console() -> serial::Serial {
    // SAFETY: defined by `board!`.
    serial::Serial::quiet(unsafe { cellvisor_x86_board() }.uart_port)
}

/// One host save area per application processor (the boot CPU's is the first guest's).
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
static AP_HOST_SAVE: [page::Page; firmware::MAX_CPUS] =
    [const { page::Page::new() }; firmware::MAX_CPUS];

/// An application processor's first Rust: SVM on, a report, then it waits to run the root
/// cell's vCPU.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
extern "C" fn ap_entry(cpu: u64) -> ! {
    use core::fmt::Write as _;
    smp::mark_stack(cpu as usize);
    exception::load();
    // SAFETY: defined by `board!`.
    let board = unsafe { cellvisor_x86_board() };
    let mut console = serial::Serial::quiet(board.uart_port);
    let svm = match (AP_HOST_SAVE.get(cpu as usize - 1), cpu::probe().1) {
        (
            Some(save),
            Some(cpu::Extension::Svm {
                nested_paging: true,
            }),
        ) => match svm::enable(save) {
            Ok(()) => "SVM on",
            Err(_) => "SVM locked off",
        },
        (_, Some(cpu::Extension::Vmx { ept: true })) => {
            gdt::load_ap();
            match vmcs::enable(cpu as usize) {
                Ok(()) => "VMX on",
                Err(_) => "VMX off (VMXON failed)",
            }
        }
        _ => "no SVM or VMX",
    };
    {
        let _guard = lock_console();
        let _ = writeln!(
            console,
            "cellvisor: CPU {cpu}: APIC ID {}, {svm}",
            smp::apic_id()
        );
    }
    smp::started();
    // Until the root cell's kernel starts it (if there is a root cell).
    root_linux::application_processor(cpu as u32, &mut console)
}

/// The console lock: one CPU prints at a time.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
fn lock_console() -> ConsoleGuard {
    use core::sync::atomic::Ordering;
    while CONSOLE_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    ConsoleGuard
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
static CONSOLE_LOCK: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Holds the console lock until dropped.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
struct ConsoleGuard;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
impl Drop for ConsoleGuard {
    fn drop(&mut self) {
        CONSOLE_LOCK.store(false, core::sync::atomic::Ordering::Release);
    }
}

/// Stops this CPU for good.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub fn halt() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Names the board description; one in each image.
#[macro_export]
macro_rules! board {
    ($board:expr) => {
        #[cfg(all(target_arch = "x86_64", target_os = "none"))]
        #[no_mangle]
        fn cellvisor_x86_board() -> &'static $crate::Board {
            static BOARD: $crate::Board = $board;
            &BOARD
        }
    };
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write as _;
    // SAFETY: see `rust_entry`.
    let board = unsafe { cellvisor_x86_board() };
    let mut console = serial::Serial::new(board.uart_port);
    let _ = writeln!(console, "cellvisor: hypervisor bug: {info}");
    halt()
}
