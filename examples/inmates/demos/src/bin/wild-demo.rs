//! `wild-demo`: breaks its partition by writing to an address that no cell configuration
//! gives it. The hypervisor must stop the cell at that write; on bare QEMU the write hits
//! nothing and the runtime reports the external abort:
//!
//! ```text
//! wild-demo: writing outside my memory
//! inmate: unhandled synchronous exception from EL1: data abort, synchronous external abort, write
//! inmate:   ESR_EL1 0x96000050  ELR_EL1 0x...  FAR_EL1 0xb000000  SPSR_EL1 0x...
//! inmate: CPU parked
//! ```
//!
//! If the write goes through, it says so and then behaves (approves a shutdown request).

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod demo {
    use cellvisor_inmate::comm::{Mailbox, Message};
    use cellvisor_inmate::mmio::{Mmio, MmioRegion};
    use cellvisor_inmate::ticker::Ticker;
    use cellvisor_inmate::{console, println, Platform};

    cellvisor_inmate::entry!(main);

    /// Outside every memory region of the reference cell configurations (RAM at 0, the UART,
    /// the communication region at 0x8000_0000), and in a hole of QEMU `virt`'s memory map
    /// (between the virtio-mmio transports and the PCIe window), where an access is an
    /// external abort.
    const OUTSIDE: usize = 0x0b00_0000;

    fn main(platform: &Platform) -> ! {
        println!("wild-demo: writing outside my memory");
        console::flush();
        // SAFETY: deliberately not sound for the cell: the address belongs to nobody the
        // cell may touch, and the hypervisor is expected to stop the cell at this store. It is
        // a single store that changes no Rust-visible memory.
        let outside = unsafe { MmioRegion::new(OUTSIDE) };
        outside.write32(0, 0xdead_beef);
        println!("wild-demo: still alive (hypervisor did not stop me)");
        let (mut ticker, _) = Ticker::start(platform, 10_000_000);
        let mut mailbox = Mailbox::new();
        loop {
            ticker.wait();
            if mailbox.poll() == Some(Message::ShutdownRequest) {
                mailbox.approve_and_park("wild-demo");
            }
        }
    }
}

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
