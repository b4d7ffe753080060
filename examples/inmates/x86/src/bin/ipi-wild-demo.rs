//! `ipi-wild-demo` for x86 cells: greets on COM2, then sends an interrupt (vector 0x40) to the
//! CPU with local APIC ID 0, a root cell CPU: the hypervisor refuses the interrupt command,
//! stops the cell and reports it.

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
    let _ = writeln!(
        console,
        "ipi-wild-demo: sending vector 0x40 to APIC ID 0, a root cell CPU"
    );
    // The interrupt command: destination APIC ID 0 (high half), fixed, physical, vector 0x40.
    rt::apic_write(0x310, 0);
    rt::apic_write(0x300, 0x40);
    let _ = writeln!(console, "ipi-wild-demo: sent and was not stopped");
    rt::park()
}

#[cfg(not(target_os = "none"))]
fn main() {}
