//! `ticker-demo`: the bystander of the hostile-cell tests. It counts 100 Hz virtual-timer
//! ticks and stores the count in its root-shared page (guest-physical 0x9000_0000, see
//! `platforms/qemu-arm64/config/ticker.toml`), where the root cell reads it with `devmem`:
//!
//! | offset | 32-bit word |
//! |---:|---|
//! | 0x0 | `0x7469636b` ("tick") once the ticker runs |
//! | 0x4 | ticks so far |
//!
//! A count that stops growing while another cell attacks means the attack reached this
//! cell's CPU or interrupts. It approves a shutdown request. The cell has no UART: it prints
//! nothing.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod demo {
    use cellvisor_inmate::comm::{Mailbox, Message};
    use cellvisor_inmate::mmio::{Mmio, MmioRegion};
    use cellvisor_inmate::ticker::Ticker;
    use cellvisor_inmate::{park, Platform};

    cellvisor_inmate::entry!(main);

    /// The root-shared page (ticker.toml).
    const SHARED: usize = 0x9000_0000;
    /// What the first word holds once the ticker runs.
    const MAGIC: u32 = 0x7469_636b;
    /// 100 Hz.
    const TICK_NS: u64 = 10_000_000;

    fn main(platform: &Platform) -> ! {
        // SAFETY: the root-shared page of the ticker cell's configuration, one page at this
        // guest-physical address; only single 32-bit stores, no Rust reference into it.
        let shared = unsafe { MmioRegion::new(SHARED) };
        let (mut ticker, setup) = Ticker::start(platform, TICK_NS);
        if setup.is_err() {
            // Without the timer interrupt the count would only show that the CPU spins.
            park();
        }
        shared.write32(4, 0);
        shared.write32(0, MAGIC);
        let mut mailbox = Mailbox::new();
        let mut ticks: u32 = 0;
        loop {
            ticker.wait();
            ticks = ticks.wrapping_add(1);
            shared.write32(4, ticks);
            if mailbox.poll() == Some(Message::ShutdownRequest) {
                mailbox.approve_and_park("ticker-demo");
            }
        }
    }
}

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
