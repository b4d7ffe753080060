//! `ioapic-wild-demo` for x86 cells: greets on COM2, then programs IOAPIC pin 4 (COM1's
//! interrupt, the root cell's): the hypervisor refuses the access, stops the cell and reports
//! it.

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
        "ioapic-wild-demo: routing IOAPIC pin 4, the root cell's"
    );
    rt::route_pin(4, 0x42, 3);
    let _ = writeln!(console, "ioapic-wild-demo: routed and was not stopped");
    rt::park()
}

#[cfg(not(target_os = "none"))]
fn main() {}
