//! `gic-wild-demo`: breaks its partition through the interrupt controller: it enables SPI 33
//! (INTID 33), which no reference cell configuration gives it (the demo cells own one UART
//! interrupt). The hypervisor must stop the cell at that write to `GICD_ISENABLER1`; a GIC
//! without a hypervisor simply enables the interrupt, and the demo says so.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod demo {
    use cellvisor_inmate::mmio::{Mmio, MmioRegion};
    use cellvisor_inmate::{console, park, println, Platform};

    cellvisor_inmate::entry!(main);

    /// `GICD_ISENABLER1`: set-enable bits of INTIDs 32..64 (GICv2 §4.3.5, GICv3 §12.9.14,
    /// same offset in both).
    const GICD_ISENABLER1: usize = 0x104;
    /// The interrupt the cell does not own.
    const FOREIGN_SPI: u32 = 33;

    fn main(platform: &Platform) -> ! {
        println!("gic-wild-demo: enabling interrupt {FOREIGN_SPI}, which is not mine");
        console::flush();
        // SAFETY: the distributor base comes from the communication region (or the bare
        // platform); a single 32-bit store that changes no Rust-visible memory. Deliberately
        // not allowed for the cell: the hypervisor is expected to stop it here.
        let distributor = unsafe { MmioRegion::new(platform.gicd.get() as usize) };
        distributor.write32(GICD_ISENABLER1, 1 << (FOREIGN_SPI - 32));
        println!("gic-wild-demo: still alive (the interrupt controller took the write)");
        console::flush();
        park()
    }
}

/// Host builds (workspace-wide `cargo test` and `clippy`) only compile the program.
#[cfg(not(target_os = "none"))]
fn main() {}
