//! cellvisor for the Xilinx ZCU102 evaluation board (Zynq UltraScale+ MPSoC): four
//! Cortex-A53 at MPIDR 0-3, a GIC-400 (GICv2 with virtualization extensions), the Cadence
//! PS UARTs at 0xFF00_0000 and 0xFF01_0000, DDR from 0. Addresses: UG1085 "System
//! Addresses" and the ZynqMP device tree (`zynqmp.dtsi`).

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

use cellvisor_aarch64::board::{Board, BootSlots, Cpus, Gic, UartKind};
use cellvisor_paging::PhysAddr;

cellvisor_aarch64::board!(Board {
    name: "zcu102",
    version: env!("CARGO_PKG_VERSION"),
    uart: (UartKind::Cadence, PhysAddr::new(0xff00_0000)),
    cpus: Cpus::Fixed(&[0, 1, 2, 3]),
    ram: (PhysAddr::new(0), 2 << 30),
    dtb_fallback: None,
    gic: Gic {
        distributor: PhysAddr::new(0xf901_0000),
        cpu_interface: Some(PhysAddr::new(0xf902_0000)),
        hypervisor_interface: Some(PhysAddr::new(0xf904_0000)),
        virtual_cpu_interface: Some(PhysAddr::new(0xf906_0000)),
        redistributors: None,
    },
    // The EL2 physical timer: PPI 10, INTID 26 (Zynq UltraScale+ TRM, GIC-400 PPIs).
    hypervisor_timer_irq: 26,
    // The same addresses as `config-address` and `kernel-address` in Cargo.toml, where
    // `cargo xtask run` reads them.
    boot: BootSlots {
        config: PhysAddr::new(0x9c_0000),
        kernel: PhysAddr::new(0xa0_0000),
    },
});

/// Host builds (workspace-wide `cargo test` and `clippy`) only check the description.
#[cfg(not(target_os = "none"))]
fn main() {}
