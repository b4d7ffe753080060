//! `stubborn-demo` for x86 cells: refuses the first shutdown request and approves the next
//! (the communication region's vote), ticking its local APIC timer every 10 ms meanwhile:
//!
//! ```text
//! stubborn-demo: started
//! stubborn-demo: shutdown denied
//! stubborn-demo: shutdown approved
//! ```

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
#[path = "../rt.rs"]
#[allow(dead_code)]
mod rt;

#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn inmate_main() -> ! {
    use core::fmt::Write as _;
    let mut console = rt::Console::init();
    let _ = writeln!(console, "stubborn-demo: started");
    rt::load_idt();
    // 10 ms at QEMU's 1 GHz APIC bus clock.
    rt::start_timer(10_000_000);
    let mut denied = false;
    loop {
        rt::wait_for_interrupt();
        match (rt::shutdown_requested(), denied) {
            (true, false) => {
                rt::deny_shutdown();
                denied = true;
                let _ = writeln!(console, "stubborn-demo: shutdown denied");
            }
            (true, true) if rt::reply_pending() => {
                rt::apic_write(0x320, 1 << 16);
                rt::approve_shutdown();
                let _ = writeln!(console, "stubborn-demo: shutdown approved");
                rt::park();
            }
            _ => {}
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
