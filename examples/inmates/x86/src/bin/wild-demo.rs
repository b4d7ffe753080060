//! `wild-demo` for x86 cells: greets on COM2, then reads guest-physical 1 GiB, outside its
//! memory: the hypervisor stops the cell and reports the access.

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
    let _ = writeln!(console, "wild-demo: reading 0x40000000, outside the cell");
    // SAFETY: deliberately not: the address is mapped by the inmate's own tables but not by
    // the cell's, and the hypervisor stops the cell at the access.
    let value = unsafe { (0x4000_0000 as *const u64).read_volatile() };
    let _ = writeln!(console, "wild-demo: read {value:#x} and was not stopped");
    rt::park()
}

#[cfg(not(target_os = "none"))]
fn main() {}
