//! A cell's stage-2 tables with `cellvisor-paging` (feature `fake`: a host memory to put
//! them in): RAM in 1 GiB and 2 MiB blocks, a device page, a translation, and every frame
//! back when the owning table is dropped.

use cellvisor_paging::fake::FakeMemory;
use cellvisor_paging::{
    Attributes, GuestPhysAddr, MapMode, Mapping, NotLive, OwnedPageTable, PhysAddr, Stage2,
};

fn main() {
    let mut memory = FakeMemory::new(PhysAddr::new(0x8000_0000), 64);
    {
        let mut table = OwnedPageTable::new(Stage2::new(40).expect("40-bit IPA"), &mut memory)
            .expect("a root table");
        let ram = Mapping {
            input: GuestPhysAddr::new(0x4000_0000),
            output: PhysAddr::new(0x4_0000_0000),
            size: (1 << 30) + (4 << 20),
            attributes: Attributes::RAM_RWX,
        };
        table.map(&mut NotLive, ram, MapMode::New).expect("RAM");
        let uart = Mapping {
            input: GuestPhysAddr::new(0x0904_0000),
            output: PhysAddr::new(0x0904_0000),
            size: 0x1000,
            attributes: Attributes::DEVICE_RW,
        };
        table.map(&mut NotLive, uart, MapMode::New).expect("UART");
        let t = table
            .translate(GuestPhysAddr::new(0x8010_0123))
            .expect("mapped");
        assert_eq!(t.output, PhysAddr::new(0x4_4010_0123));
        assert_eq!(t.size, 2 << 20, "a 2 MiB block after the 1 GiB one");
        let stats = table.stats();
        println!(
            "stage 2: root at {:#x}, {} table frames, {} mappings",
            table.root().as_u64(),
            stats.frames,
            table.mappings().count()
        );
    }
    assert_eq!(memory.frames_in_use(), 0, "dropped: every frame back");
    println!("stage 2: dropped, every frame back");
}
