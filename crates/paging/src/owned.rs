//! [`OwnedPageTable`]: a [`PageTable`] together with the memory its frames come from, which
//! gives them back when it is dropped.

use crate::memory::{FrameAllocator, PhysMemory};
use crate::table::{MapMode, Mapping, Mappings, PageTable, Stats, Translation};
use crate::tlb::TlbInvalidate;
use crate::{Attributes, Error, Format, PhysAddr};

/// A [`PageTable`] that owns (or borrows, with `M = &mut X`) the memory and frame allocator
/// its frames come from, and frees every frame of the tree when dropped, as
/// `aarch64-paging`'s tables do.
///
/// The plain [`PageTable`] keeps no reference to its memory (the hypervisor keeps one frame
/// pool for the tables of all cells, under one lock) and frees its frames only on
/// [`PageTable::destroy`]. This type is for users who want the tree and its memory in one
/// value: no frame is lost on an early return or a panic.
///
/// ```
/// # #[cfg(feature = "fake")] {
/// use cellvisor_paging::fake::FakeMemory;
/// use cellvisor_paging::{
///     Attributes, GuestPhysAddr, MapMode, Mapping, NotLive, OwnedPageTable, PhysAddr, Stage2,
/// };
///
/// let mut mem = FakeMemory::new(PhysAddr::new(0x8000_0000), 64);
/// {
///     let mut table = OwnedPageTable::new(Stage2::new(40).unwrap(), &mut mem).unwrap();
///     let page = Mapping {
///         input: GuestPhysAddr::new(0x1000),
///         output: PhysAddr::new(0x4000_1000),
///         size: 0x1000,
///         attributes: Attributes::RAM_RWX,
///     };
///     table.map(&mut NotLive, page, MapMode::New).unwrap();
///     assert_eq!(table.stats().frames, 4); // two root tables, a level-2 and a level-3 table
/// } // dropped: every frame back
/// assert_eq!(mem.frames_in_use(), 0);
/// # }
/// ```
#[derive(Debug)]
pub struct OwnedPageTable<F: Format, M: FrameAllocator + PhysMemory> {
    /// The tree and its memory; `None` only inside [`into_parts`](Self::into_parts), which
    /// consumes the value.
    parts: Option<(PageTable<F>, M)>,
}

/// What every method but `into_parts` finds.
const THERE: &str = "an OwnedPageTable has its parts until into_parts consumes it";

impl<F: Format, M: FrameAllocator + PhysMemory> OwnedPageTable<F, M> {
    /// An empty tree with its root allocated from `mem`.
    pub fn new(format: F, mut mem: M) -> Result<Self, Error> {
        let table = PageTable::new(format, &mut mem)?;
        Ok(Self::from_parts(table, mem))
    }

    /// Takes over `table`, whose frames came from `mem`.
    pub fn from_parts(table: PageTable<F>, mem: M) -> Self {
        Self {
            parts: Some((table, mem)),
        }
    }

    /// Gives the tree and the memory back without freeing anything.
    pub fn into_parts(mut self) -> (PageTable<F>, M) {
        self.parts.take().expect(THERE)
    }

    fn parts(&self) -> (&PageTable<F>, &M) {
        let (table, mem) = self.parts.as_ref().expect(THERE);
        (table, mem)
    }

    fn parts_mut(&mut self) -> (&mut PageTable<F>, &mut M) {
        let (table, mem) = self.parts.as_mut().expect(THERE);
        (table, mem)
    }

    /// The physical address of the root table.
    pub fn root(&self) -> PhysAddr {
        self.parts().0.root()
    }

    /// The memory the frames come from.
    pub fn memory(&self) -> &M {
        self.parts().1
    }

    /// [`PageTable::map`].
    pub fn map<T: TlbInvalidate<F::Input>>(
        &mut self,
        tlb: &mut T,
        mapping: Mapping<F::Input>,
        mode: MapMode,
    ) -> Result<(), Error> {
        let (table, mem) = self.parts_mut();
        table.map(mem, tlb, mapping, mode)
    }

    /// [`PageTable::unmap`].
    pub fn unmap<T: TlbInvalidate<F::Input>>(
        &mut self,
        tlb: &mut T,
        input: F::Input,
        size: u64,
    ) -> Result<(), Error> {
        let (table, mem) = self.parts_mut();
        table.unmap(mem, tlb, input, size)
    }

    /// [`PageTable::protect`].
    pub fn protect<T: TlbInvalidate<F::Input>>(
        &mut self,
        tlb: &mut T,
        input: F::Input,
        size: u64,
        attributes: Attributes,
    ) -> Result<(), Error> {
        let (table, mem) = self.parts_mut();
        table.protect(mem, tlb, input, size, attributes)
    }

    /// [`PageTable::translate`].
    pub fn translate(&self, input: F::Input) -> Option<Translation> {
        let (table, mem) = self.parts();
        table.translate(mem, input)
    }

    /// [`PageTable::mappings`].
    pub fn mappings(&self) -> Mappings<'_, F, M> {
        let (table, mem) = self.parts();
        table.mappings(mem)
    }

    /// [`PageTable::stats`].
    pub fn stats(&self) -> Stats {
        let (table, mem) = self.parts();
        table.stats(mem)
    }
}

impl<F: Format, M: FrameAllocator + PhysMemory> Drop for OwnedPageTable<F, M> {
    fn drop(&mut self) {
        if let Some((table, mut mem)) = self.parts.take() {
            table.destroy(&mut mem);
        }
    }
}

#[cfg(all(test, feature = "fake"))]
mod tests {
    use super::*;
    use crate::fake::FakeMemory;
    use crate::{GuestPhysAddr, NotLive, Stage2};

    fn page(at: u64) -> Mapping<GuestPhysAddr> {
        Mapping {
            input: GuestPhysAddr::new(at),
            output: PhysAddr::new(0x4000_0000 + at),
            size: 0x1000,
            attributes: Attributes::RAM_RWX,
        }
    }

    #[test]
    fn dropping_frees_every_frame_into_parts_frees_none() {
        let mut mem = FakeMemory::new(PhysAddr::new(0x8000_0000), 64);
        {
            let mut table = OwnedPageTable::new(Stage2::new(40).unwrap(), &mut mem).unwrap();
            table.map(&mut NotLive, page(0x1000), MapMode::New).unwrap();
            table
                .map(&mut NotLive, page(0x4000_0000), MapMode::New)
                .unwrap();
            assert!(table.memory().frames_in_use() > 2);
            assert_eq!(
                table.translate(GuestPhysAddr::new(0x1234)).unwrap().output,
                PhysAddr::new(0x4000_1234)
            );
            table
                .unmap(&mut NotLive, GuestPhysAddr::new(0x1000), 0x1000)
                .unwrap();
            assert_eq!(table.mappings().count(), 1);
        }
        assert_eq!(mem.frames_in_use(), 0);

        let table = OwnedPageTable::new(Stage2::new(40).unwrap(), &mut mem).unwrap();
        let (table, _) = table.into_parts();
        assert_eq!(mem.frames_in_use(), 2, "into_parts keeps the tree");
        let table = OwnedPageTable::from_parts(table, &mut mem);
        drop(table);
        assert_eq!(mem.frames_in_use(), 0);
    }
}
