//! A cell's distributor accesses with `cellvisor-gic` over a register file of one's own (the
//! `GicRegisters` trait; the hypervisor uses `MmioRegion`): the same calls for GICv2 and
//! GICv3, and a violation that says what and where.

use cellvisor_gic::v2::Accessor;
use cellvisor_gic::{
    CellId, CpuSet, Distributor, ForeignWrites, GicRegisters, IntId, IrqOwnership, MmioAccess,
    Mpidr, Outcome, Topology, Version, Width,
};

/// A distributor's registers in memory: 64 KiB of words.
struct Registers(Vec<u32>);

impl GicRegisters for Registers {
    fn read32(&mut self, offset: usize) -> u32 {
        self.0[offset / 4]
    }

    fn write32(&mut self, offset: usize, value: u32) {
        self.0[offset / 4] = value;
    }
}

fn main() {
    let (root, cell) = (CellId::new(0), CellId::new(1));
    let mpidrs = [0, 1, 2, 3].map(|cpu| Mpidr::new(0, 0, 0, cpu));
    let topology = Topology::new(&mpidrs);
    let by = Accessor {
        cell,
        cpus: CpuSet::from_bits(0b1100),
        cpu: 2,
    };
    for version in [Version::V2, Version::V3] {
        let mut gicd = Registers(vec![0; 0x4000]);
        gicd.write32(0x004, 0b111); // GICD_TYPER: 256 INTIDs
        let dist = Distributor::probe(&mut gicd, version, root, ForeignWrites::Report);
        let mut owners = IrqOwnership::new(dist.implemented_irqs());
        owners.assign_all(cell, &[IntId::new(40)]).expect("SPI 40");
        // GICD_ISENABLER1: enabling SPI 40 is the cell's to do.
        let enable = MmioAccess::write(0x104, Width::Word, 1 << 8);
        let done = dist.access(&mut gicd, &owners, by, &topology, enable);
        assert_eq!(done, Ok(Outcome::Written));
        // SPI 33 is the root cell's: the cell is stopped, and told why.
        let foreign = MmioAccess::write(0x104, Width::Word, 1 << 1);
        let violation = dist
            .access(&mut gicd, &owners, by, &topology, foreign)
            .expect_err("a foreign SPI");
        println!("{version:?}: {violation}");
    }
}
