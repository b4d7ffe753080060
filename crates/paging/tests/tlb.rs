//! Break-before-make and TLB maintenance on a live table, event by event.

#![cfg(feature = "fake")]

use cellvisor_paging::fake::{Event, FakeMemory};
use cellvisor_paging::{
    Attributes, Descriptor, GuestPhysAddr, MapMode, Mapping, PageTable, PhysAddr, Stage2, Stale,
};

const MIB2: u64 = 2 << 20;

/// The invalidations among the events.
fn invalidations(events: &[Event]) -> Vec<(u64, u64, Stale)> {
    events
        .iter()
        .filter_map(|e| match *e {
            Event::Invalidate { start, size, stale } => Some((start, size, stale)),
            Event::Write { .. } => None,
        })
        .collect()
}

fn setup() -> (PageTable<Stage2>, FakeMemory) {
    let mut mem = FakeMemory::new(PhysAddr::new(0x100_0000_0000), 64);
    let mut table = PageTable::new(Stage2::new(40).unwrap(), &mut mem).unwrap();
    let mut tlb = mem.tlb();
    let block = Mapping {
        input: GuestPhysAddr::new(0x4000_0000),
        output: PhysAddr::new(0x8000_0000),
        size: MIB2,
        attributes: Attributes::RAM_RWX,
    };
    mem.start_recording();
    table.map(&mut mem, &mut tlb, block, MapMode::New).unwrap();
    // Mapping into empty space invalidates nothing.
    assert_eq!(invalidations(&mem.take_events()), []);
    (table, mem)
}

#[test]
fn unmapping_a_page_inside_a_block() {
    let (mut table, mut mem) = setup();
    let mut tlb = mem.tlb();
    mem.start_recording();
    table
        .unmap(&mut mem, &mut tlb, GuestPhysAddr::new(0x4000_3000), 0x1000)
        .unwrap();
    let events = mem.take_events();
    // The block is broken, invalidated, replaced by an equivalent table (split); then the
    // page is broken and invalidated.
    assert_eq!(
        invalidations(&events),
        [
            (0x4000_0000, MIB2, Stale::Leaf),
            (0x4000_3000, 0x1000, Stale::Leaf)
        ]
    );
    // Around the first invalidation: the block descriptor broken just before it, the table
    // descriptor written to the same slot just after it.
    let first = events
        .iter()
        .position(|e| matches!(e, Event::Invalidate { .. }))
        .unwrap();
    let (
        Event::Write {
            table: t0,
            index: i0,
            old,
            new,
        },
        Event::Write {
            table: t1,
            index: i1,
            old: gap,
            new: made,
        },
    ) = (events[first - 1], events[first + 1])
    else {
        panic!("no break/make around the invalidation: {events:?}");
    };
    assert_ne!(old, Descriptor::INVALID);
    assert_eq!(new, Descriptor::INVALID);
    assert_eq!((t0, i0), (t1, i1));
    assert_eq!(gap, Descriptor::INVALID);
    assert_eq!(made.bits() & 0b11, 0b11, "a table descriptor");
    assert!(table
        .translate(&mem, GuestPhysAddr::new(0x4000_3000))
        .is_none());
    assert_eq!(table.stats(&mem).leaves[3], 511);
}

#[test]
fn remapping_the_hole_folds_back_into_a_block() {
    let (mut table, mut mem) = setup();
    let mut tlb = mem.tlb();
    table
        .unmap(&mut mem, &mut tlb, GuestPhysAddr::new(0x4000_3000), 0x1000)
        .unwrap();
    let frames = mem.frames_in_use();
    mem.start_recording();
    let page = Mapping {
        input: GuestPhysAddr::new(0x4000_3000),
        output: PhysAddr::new(0x8000_3000),
        size: 0x1000,
        attributes: Attributes::RAM_RWX,
    };
    table.map(&mut mem, &mut tlb, page, MapMode::New).unwrap();
    // Filling the hole makes the table uniform: it is replaced by the block again (the table
    // entry is broken and everything below it invalidated), and its frame is freed.
    assert_eq!(
        invalidations(&mem.take_events()),
        [(0x4000_0000, MIB2, Stale::Table)]
    );
    assert_eq!(mem.frames_in_use(), frames - 1);
    assert_eq!(table.stats(&mem).leaves, [0, 0, 1, 0]);
}

#[test]
fn protect_changes_only_what_it_must() {
    let (mut table, mut mem) = setup();
    let mut tlb = mem.tlb();
    mem.start_recording();
    table
        .protect(
            &mut mem,
            &mut tlb,
            GuestPhysAddr::new(0x4000_0000),
            MIB2,
            Attributes::RAM_RO,
        )
        .unwrap();
    assert_eq!(
        invalidations(&mem.take_events()),
        [(0x4000_0000, MIB2, Stale::Leaf)]
    );
    // Protecting again with the same attributes writes nothing and invalidates nothing.
    mem.start_recording();
    table
        .protect(
            &mut mem,
            &mut tlb,
            GuestPhysAddr::new(0x4000_0000),
            MIB2,
            Attributes::RAM_RO,
        )
        .unwrap();
    assert_eq!(mem.take_events(), []);
}

#[test]
fn unmapping_everything_frees_the_tables() {
    let (mut table, mut mem) = setup();
    let mut tlb = mem.tlb();
    table
        .unmap(&mut mem, &mut tlb, GuestPhysAddr::new(0x4000_3000), 0x1000)
        .unwrap();
    assert_eq!(
        mem.frames_in_use(),
        2 + 2,
        "root (2 frames), level 2, level 3"
    );
    mem.start_recording();
    table
        .unmap(&mut mem, &mut tlb, GuestPhysAddr::new(0x4000_0000), 1 << 30)
        .unwrap();
    // The level-1 entry covers the whole range: one table invalidation, whole subtree freed.
    assert_eq!(
        invalidations(&mem.take_events()),
        [(0x4000_0000, 1 << 30, Stale::Table)]
    );
    assert_eq!(mem.frames_in_use(), 2);
    assert_eq!(table.mappings(&mem).count(), 0);
}
