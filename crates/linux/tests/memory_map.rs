//! The memory map against a model: one kind (or a hole) per 4 KiB page of a small address
//! space, changed by the same random sequence of `set` and `remove`.

use cellvisor_linux::memory_map::{Kind, MapError, MemoryMap};
use proptest::prelude::*;

const PAGES: u64 = 64;
const PAGE: u64 = 0x1000;

fn kind() -> impl Strategy<Value = Option<Kind>> {
    prop_oneof![
        Just(None),
        Just(Some(Kind::Ram)),
        Just(Some(Kind::Reserved)),
        Just(Some(Kind::AcpiNvs)),
        (6u32..9).prop_map(|n| Some(Kind::from_type(n))),
    ]
}

proptest! {
    #[test]
    fn the_map_is_the_model(
        changes in prop::collection::vec((0..PAGES, 0..PAGES / 2, kind()), 0..40)
    ) {
        let mut map = MemoryMap::new();
        let mut model = [None; PAGES as usize];
        for (first, count, kind) in changes {
            let count = count.min(PAGES - first);
            let result = match kind {
                Some(kind) => map.set(first * PAGE, count * PAGE, kind),
                None => map.remove(first * PAGE, count * PAGE),
            };
            // 64 pages never need more than 64 ranges.
            prop_assert_eq!(result, Ok::<(), MapError>(()));
            for page in first..first + count {
                model[page as usize] = kind;
            }
            // Sorted, not empty, not overlapping, neighbours of one kind merged.
            for pair in map.ranges().windows(2) {
                prop_assert!(pair[0].end() <= pair[1].start);
                prop_assert!(pair[0].end() != pair[1].start || pair[0].kind != pair[1].kind);
            }
            prop_assert!(map.ranges().iter().all(|r| r.size > 0));
            for page in 0..PAGES {
                prop_assert_eq!(map.kind_at(page * PAGE + 5), model[page as usize]);
            }
        }
        // is_all agrees with the model for every run of pages.
        for first in 0..PAGES {
            for count in 1..=(PAGES - first).min(8) {
                let model_all = (first..first + count)
                    .all(|p| model[p as usize] == Some(Kind::Ram));
                prop_assert_eq!(map.is_all(first * PAGE, count * PAGE, Kind::Ram), model_all);
            }
        }
    }
}
