//! cellvisor for QEMU's q35 machine (`-M q35`), started by QEMU's Multiboot loader
//! (`-kernel cellvisor.bin`); COM1 is the console.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

cellvisor_x86::board!(cellvisor_x86::Board {
    name: "qemu-x86",
    version: env!("CARGO_PKG_VERSION"),
    uart_port: 0x3f8,
});

/// Host builds (workspace-wide `cargo test` and `clippy`) only check the description.
#[cfg(not(target_os = "none"))]
fn main() {}
