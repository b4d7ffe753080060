//! `uart-demo` for x86 cells: greets on COM2 from 64-bit mode with its local APIC ID, routes
//! COM2's interrupt through its IOAPIC pin (3) to itself and enables it, then ticks its local
//! APIC timer every 10 ms (each interrupt ended at the trapped APIC page) until the hypervisor
//! asks it to shut down, which it approves:
//!
//! ```text
//! uart-demo: hello from a cell, 64-bit mode, local APIC ID 3
//! uart-demo: COM2 interrupt through IOAPIC pin 3 received
//! uart-demo: 100 timer interrupts
//! uart-demo: shutdown approved after 250 timer interrupts
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
    let apic_id = rt::apic_read(0x20) >> 24;
    let _ = writeln!(
        console,
        "uart-demo: hello from a cell, 64-bit mode, local APIC ID {apic_id}"
    );
    rt::load_idt();
    // COM2's interrupt (ISA IRQ 3, IOAPIC pin 3, the cell's) to this CPU: the transmitter is
    // empty, so enabling its interrupt raises one at once.
    rt::route_pin(3, 0x41, apic_id);
    rt::com2_enable_tx_interrupt();
    // 10 ms at QEMU's 1 GHz APIC bus clock.
    rt::start_timer(10_000_000);
    let mut ticks = 0u64;
    let mut com2_seen = false;
    loop {
        rt::wait_for_interrupt();
        ticks += 1;
        if !com2_seen && rt::irq_count() > 0 {
            com2_seen = true;
            let _ = writeln!(
                console,
                "uart-demo: COM2 interrupt through IOAPIC pin 3 received"
            );
        }
        if ticks == 100 {
            let _ = writeln!(console, "uart-demo: 100 timer interrupts");
        }
        if rt::shutdown_requested() {
            rt::apic_write(0x320, 1 << 16);
            rt::approve_shutdown();
            let _ = writeln!(
                console,
                "uart-demo: shutdown approved after {ticks} timer interrupts"
            );
            rt::park();
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
