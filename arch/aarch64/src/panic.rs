//! Panics in the hypervisor are bugs: report where and what, then park the CPU.

use crate::hw::{cpu_index, park, report};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    report(format_args!(
        "\ncellvisor: FATAL: CPU {}: hypervisor panic: {info}\ncellvisor: CPU {} parked\n",
        cpu_index(),
        cpu_index()
    ));
    park()
}
