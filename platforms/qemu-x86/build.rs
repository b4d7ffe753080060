//! Memory layout of the qemu-x86 image, for the linker script of `cellvisor-x86`: linked at
//! 16 MiB, above what the PC's firmware and the Multiboot loader use below 1 MiB and the
//! root cell's kernel at 1 MiB.

fn main() {
    // Host builds of the workspace only type-check the board crate.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    for (name, value) in [
        ("HYP_BASE", 0x0100_0000u64),
        // The hypervisor region of config/system.toml.
        ("HYP_SIZE", 0x80_0000),
        // The boot CPU builds the root cell's books (the core's registry, tens of KiB, moved
        // through the stack): 64 KiB overflowed (each stack's lowest word is a canary that
        // every exit checks, smp.rs).
        ("BOOT_STACK_SIZE", 0x4_0000),
    ] {
        println!("cargo:rustc-link-arg-bins=--defsym={name}={value:#x}");
    }
    println!("cargo:rustc-link-arg-bins=-Tcellvisor-x86.ld");
    println!("cargo:rustc-link-arg-bins=--no-pie");
}
