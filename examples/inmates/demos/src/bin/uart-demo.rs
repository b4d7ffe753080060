//! `uart-demo`: greets, then prints a counter once a second, sleeping on a 10 ms tick in
//! between:
//!
//! ```text
//! uart-demo: hello from cell
//! uart-demo: 1
//! uart-demo: 2
//! ```
//!
//! It approves a shutdown request (`uart-demo: shutdown approved`) and parks.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod demo {
    use cellvisor_inmate::comm::{Mailbox, Message};
    use cellvisor_inmate::ticker::Ticker;
    use cellvisor_inmate::{println, timer, Platform};

    cellvisor_inmate::entry!(main);

    /// How often the shutdown request is polled.
    const TICK_NS: u64 = 10_000_000;

    fn main(platform: &Platform) -> ! {
        println!("uart-demo: hello from cell");
        let (mut ticker, setup) = Ticker::start(platform, TICK_NS);
        if let Err(error) = setup {
            println!("uart-demo: no timer interrupt ({error:?}), spinning instead");
        }
        let second = platform.timer_frequency.get();
        let mut mailbox = Mailbox::new();
        let mut next = timer::counter() + second;
        let mut count = 0u64;
        loop {
            ticker.wait();
            if mailbox.poll() == Some(Message::ShutdownRequest) {
                mailbox.approve_and_park("uart-demo");
            }
            if timer::counter() >= next {
                count += 1;
                println!("uart-demo: {count}");
                next += second;
            }
        }
    }
}

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
