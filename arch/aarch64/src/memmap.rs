//! The hypervisor's own EL2 map: its image with per-section permissions (W^X) and the
//! devices it drives, identity mapped.

use cellvisor_paging::{
    Access, Attributes, Cacheability, Error, FrameAllocator, MapMode, Mapping, MemoryType, NotLive,
    PageTable, PhysAddr, PhysMemory, Stage1El2, VirtAddr, PAGE_SIZE,
};

/// Section boundaries of the loaded image (all 4 KiB aligned, ascending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLayout {
    /// First byte of the image (and of `.text`).
    pub start: PhysAddr,
    /// End of `.text`, start of `.rodata`.
    pub text_end: PhysAddr,
    /// End of `.rodata`, start of `.data`.
    pub rodata_end: PhysAddr,
    /// End of `.data` and `.bss` (page-table pool included): the stacks follow.
    pub stacks_start: PhysAddr,
    /// The stack areas, one after the other from `stacks_start`: the primary CPU's boot
    /// stack, the per-CPU main stacks, the per-CPU exception stacks.
    pub stacks: [StackArea; 3],
}

/// `count` stacks in slots of `slot` bytes; the first page of each slot is a guard page that
/// stays unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackArea {
    /// Number of slots.
    pub count: u64,
    /// Bytes per slot, guard page included.
    pub slot: u64,
}

impl ImageLayout {
    /// End of the image.
    pub fn end(&self) -> PhysAddr {
        let stacks: u64 = self.stacks.iter().map(|a| a.count * a.slot).sum();
        PhysAddr::new(self.stacks_start.as_u64() + stacks)
    }
}

/// The mappings of the hypervisor's own map, in ascending address order.
pub fn plan(
    image: ImageLayout,
    devices: &[(PhysAddr, u64)],
) -> impl Iterator<Item = Mapping<VirtAddr>> + '_ {
    let ram = |from: PhysAddr, to: PhysAddr, access| Mapping {
        input: VirtAddr::new(from.as_u64()),
        output: from,
        size: to.as_u64() - from.as_u64(),
        attributes: Attributes::new(access, MemoryType::Normal(Cacheability::WriteBack)),
    };
    let sections = [
        ram(image.start, image.text_end, Access::RX),
        ram(image.text_end, image.rodata_end, Access::READ),
        ram(image.rodata_end, image.stacks_start, Access::RW),
    ];
    let mut area_start = image.stacks_start.as_u64();
    let stacks = image.stacks.into_iter().flat_map(move |area| {
        let first = area_start;
        area_start += area.count * area.slot;
        (0..area.count).map(move |i| {
            let stack = PhysAddr::new(first + i * area.slot + PAGE_SIZE);
            ram(
                stack,
                PhysAddr::new(first + (i + 1) * area.slot),
                Access::RW,
            )
        })
    });
    let devices = devices.iter().map(|&(base, size)| {
        let start = base.as_u64() & !(PAGE_SIZE - 1);
        let end = (base.as_u64() + size).next_multiple_of(PAGE_SIZE);
        Mapping {
            input: VirtAddr::new(start),
            output: PhysAddr::new(start),
            size: end - start,
            attributes: Attributes::DEVICE_RW,
        }
    });
    sections
        .into_iter()
        .chain(stacks)
        .filter(|m| m.size > 0)
        .chain(devices)
}

/// Builds the map into `table`. Devices that overlap each other are mapped once.
pub fn build<M: FrameAllocator + PhysMemory>(
    table: &mut PageTable<Stage1El2>,
    mem: &mut M,
    image: ImageLayout,
    devices: &[(PhysAddr, u64)],
) -> Result<(), Error> {
    for mapping in plan(image, devices) {
        // Devices may share a page (e.g. two UARTs); the same mapping twice is fine.
        table.map(mem, &mut NotLive, mapping, MapMode::Replace)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellvisor_paging::fake::FakeMemory;

    #[test]
    fn sections_get_their_permissions() {
        let image = ImageLayout {
            start: PhysAddr::new(0x4020_0000),
            text_end: PhysAddr::new(0x4021_0000),
            rodata_end: PhysAddr::new(0x4021_4000),
            stacks_start: PhysAddr::new(0x4028_0000),
            // A boot stack of 8 KiB; two CPUs: main stacks of 16 KiB, exception stacks of
            // 8 KiB.
            stacks: [
                StackArea {
                    count: 1,
                    slot: 0x3000,
                },
                StackArea {
                    count: 2,
                    slot: 0x5000,
                },
                StackArea {
                    count: 2,
                    slot: 0x3000,
                },
            ],
        };
        assert_eq!(
            image.end(),
            PhysAddr::new(0x4028_0000 + 0x3000 + 2 * 0x5000 + 2 * 0x3000)
        );
        let mut mem = FakeMemory::new(PhysAddr::new(0x1_0000_0000), 16);
        let mut table = PageTable::new(Stage1El2::new(39).unwrap(), &mut mem).unwrap();
        build(
            &mut table,
            &mut mem,
            image,
            &[(PhysAddr::new(0x0900_0000), 0x1000)],
        )
        .unwrap();
        let at = |a: u64| {
            table
                .translate(&mem, VirtAddr::new(a))
                .map(|t| t.attributes)
        };
        assert_eq!(at(0x4020_0000).unwrap().access, Access::RX);
        assert_eq!(at(0x4021_0000).unwrap().access, Access::READ);
        assert_eq!(at(0x4021_4000).unwrap().access, Access::RW);
        assert_eq!(at(0x4027_f000).unwrap().access, Access::RW);
        // Guard pages at the bottom of every stack slot; the stacks themselves are RW.
        for guard in [
            0x4028_0000,
            0x4028_3000,
            0x4028_8000,
            0x4028_d000,
            0x4029_0000,
        ] {
            assert_eq!(at(guard), None, "guard page {guard:#x} is mapped");
            assert_eq!(at(guard + 0x1000).unwrap().access, Access::RW);
            assert_eq!(at(guard - 0x1000).unwrap().access, Access::RW);
        }
        assert_eq!(at(0x0900_0000), Some(Attributes::DEVICE_RW));
        assert_eq!(at(0x4029_3000), None, "nothing past the image");
        assert_eq!(at(0x4000_0000), None, "nothing below the image");
        // Never writable and executable at once.
        for m in table.mappings(&mem) {
            assert!(!m
                .attributes
                .access
                .contains(Access::WRITE | Access::EXECUTE));
        }
    }
}
