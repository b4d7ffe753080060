//! `stubborn-demo`: refuses the first shutdown request and approves the second:
//!
//! ```text
//! stubborn-demo: running
//! stubborn-demo: shutdown denied
//! stubborn-demo: shutdown approved
//! ```
//!
//! It polls the communication region on a 10 ms tick.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod demo {
    use cellvisor_inmate::comm::{Mailbox, Message, Reply};
    use cellvisor_inmate::ticker::Ticker;
    use cellvisor_inmate::{println, Platform};

    cellvisor_inmate::entry!(main);

    /// How often the shutdown request is polled.
    const TICK_NS: u64 = 10_000_000;

    fn main(platform: &Platform) -> ! {
        println!("stubborn-demo: running");
        let (mut ticker, _) = Ticker::start(platform, TICK_NS);
        let mut mailbox = Mailbox::new();
        let mut denied = false;
        loop {
            ticker.wait();
            if mailbox.poll() != Some(Message::ShutdownRequest) {
                continue;
            }
            if !denied {
                mailbox.reply(Reply::Denied);
                println!("stubborn-demo: shutdown denied");
                denied = true;
            } else {
                mailbox.approve_and_park("stubborn-demo");
            }
        }
    }
}

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
