//! cellvisor for QEMU's arm64 `virt` machine (`-M virt,virtualization=on`), with a GICv2 or
//! a GICv3. Memory map: QEMU `hw/arm/virt.c` (`base_memmap`).

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

use cellvisor_aarch64::board::{Board, BootSlots, Cpus, Gic, UartKind};
use cellvisor_paging::PhysAddr;

cellvisor_aarch64::board!(Board {
    name: "qemu-arm64",
    version: env!("CARGO_PKG_VERSION"),
    // UART0: PL011 at 0x0900_0000.
    uart: (UartKind::Pl011, PhysAddr::new(0x0900_0000)),
    // The CPU count follows -smp; QEMU describes the CPUs in its device tree.
    cpus: Cpus::DeviceTree { fallback: &[0] },
    // RAM starts at 1 GiB and may reach up to 256 GiB (-m).
    ram: (PhysAddr::new(0x4000_0000), 255 << 30),
    dtb_fallback: Some(PhysAddr::new(0x4000_0000)),
    gic: Gic {
        distributor: PhysAddr::new(0x0800_0000),
        cpu_interface: Some(PhysAddr::new(0x0801_0000)),
        hypervisor_interface: Some(PhysAddr::new(0x0803_0000)),
        virtual_cpu_interface: Some(PhysAddr::new(0x0804_0000)),
        redistributors: Some(PhysAddr::new(0x080a_0000)),
    },
    // The EL2 physical timer: PPI 10, INTID 26 (QEMU hw/arm/virt.c, ARCH_TIMER_NS_EL2_IRQ).
    hypervisor_timer_irq: 26,
    // The same addresses as `config-address` and `kernel-address` in Cargo.toml, where
    // `cargo xtask run` reads them.
    boot: BootSlots {
        config: PhysAddr::new(0x409c_0000),
        kernel: PhysAddr::new(0x40a0_0000),
    },
});

/// Host builds (workspace-wide `cargo test` and `clippy`) only check the description.
#[cfg(not(target_os = "none"))]
fn main() {}
