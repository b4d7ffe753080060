//! Memory layout of the zcu102 image, for the linker script of `cellvisor-aarch64`.
//! DDR starts at 0 (UG1085, "System Addresses"); the hypervisor is linked 2 MiB above, where
//! U-Boot's `booti` places an Image whose `text_offset` is 2 MiB.

fn main() {
    // Host builds of the workspace only type-check the board crate.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let layout = [
        ("DRAM_BASE", 0x0),
        ("HYP_BASE", 0x20_0000),
        ("MAX_CPUS", 4),
        // Measured high-water marks (QEMU, every system-test script): boot 75 KiB, main
        // stacks of secondaries under 1 KiB, exception stacks 19 KiB.
        // 96 KiB overflowed into the guard page at boot once the cell registry (21 KiB,
        // moved through the boot CPU's stack while the management interface is set up) got
        // the cells' I/O port ranges; not measured again since.
        ("BOOT_STACK_SIZE", 0x20000),
        ("STACK_SIZE", 0x4000),
        ("EXCEPTION_STACK_SIZE", 0x8000),
    ];
    for (name, value) in layout {
        println!("cargo:rustc-link-arg-bins=--defsym={name}={value:#x}");
    }
    println!("cargo:rustc-link-arg-bins=-Tcellvisor-aarch64.ld");
}
