//! The engine on real memory through `LinearMemory`, as in the hypervisor: table frames live
//! in a host buffer that stands for physical memory at a made-up physical address.

use cellvisor_paging::{
    Attributes, FrameAllocator, GuestPhysAddr, LinearMemory, MapMode, Mapping, NotLive, PageTable,
    PhysAddr, Stage2, TableMemory,
};

const FRAMES: usize = 16;
const PHYS_BASE: u64 = 0x8000_0000;

/// Physical memory for the tables: 4 KiB-aligned frames.
#[repr(C, align(4096))]
struct Frames([[u64; 512]; FRAMES]);

/// Hands out the frames of the buffer in order; `count` frames aligned to `count`.
struct Bump {
    next: usize,
    freed: usize,
}

impl FrameAllocator for Bump {
    fn allocate_frames(&mut self, count: usize) -> Option<PhysAddr> {
        let first = self.next.next_multiple_of(count);
        (first + count <= FRAMES).then(|| {
            self.next = first + count;
            PhysAddr::new(PHYS_BASE + first as u64 * 4096)
        })
    }

    fn deallocate_frames(&mut self, _base: PhysAddr, count: usize) {
        self.freed += count;
    }
}

#[test]
fn tables_in_real_memory() {
    let mut buffer = Box::new(Frames([[0xdead_beef; 512]; FRAMES]));
    let host = buffer.0.as_mut_ptr() as u64;
    // SAFETY: every frame the allocator hands out lies inside `buffer`, which outlives
    // `memory` and is not touched by anything else until the engine is done with it.
    let linear = unsafe { LinearMemory::new(host.wrapping_sub(PHYS_BASE)) };
    let mut memory = TableMemory {
        frames: Bump { next: 0, freed: 0 },
        memory: linear,
    };
    let mut table = PageTable::new(Stage2::new(40).unwrap(), &mut memory).unwrap();
    assert_eq!(table.root(), PhysAddr::new(PHYS_BASE));
    let page = Mapping {
        input: GuestPhysAddr::new(0x4000_1000),
        output: PhysAddr::new(0x9000_1000),
        size: 0x1000,
        attributes: Attributes::RAM_RW,
    };
    table
        .map(&mut memory, &mut NotLive, page, MapMode::New)
        .unwrap();
    let t = table
        .translate(&memory, GuestPhysAddr::new(0x4000_1abc))
        .unwrap();
    assert_eq!(t.output, PhysAddr::new(0x9000_1abc));
    let frames = table.stats(&memory).frames;
    assert_eq!(table.destroy(&mut memory), frames);
    assert_eq!(memory.frames.freed, frames);

    // Root: frames 0 and 1 (two concatenated tables). The two frames the map reserved (2, 3)
    // are used last-allocated first: level-2 table in frame 3, level-3 table in frame 2.
    // IPA 0x4000_1000: root index 1, level-2 index 0, level-3 index 1.
    let root = &buffer.0[0];
    assert_eq!(root[1] & !0xfff, PHYS_BASE + 3 * 4096);
    assert_eq!(root[0], 0, "the root was cleared");
    assert_eq!(buffer.0[1][0], 0, "the second root frame was cleared");
    assert_eq!(buffer.0[3][0] & !0xfff, PHYS_BASE + 2 * 4096);
    assert_eq!(buffer.0[2][1] & 0xffff_ffff_f000, 0x9000_1000);
    assert_eq!(buffer.0[2][0], 0);
    assert_eq!(
        buffer.0[4][0], 0xdead_beef,
        "frames never allocated are untouched"
    );
}
