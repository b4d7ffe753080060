//! Who is who: [`CellId`], [`CpuSet`], [`Mpidr`] and the [`Topology`] that maps affinities to
//! the hypervisor's CPU indices.

use core::fmt;

/// A cell (partition), as numbered by the hypervisor: `cellvisor-abi`'s, the one every
/// cellvisor crate uses. The root cell is a cell like any other here; emulators that treat it
/// specially are told which one it is.
pub use cellvisor_abi::CellId;

/// A set of CPUs by hypervisor CPU index (0..64), e.g. the CPUs of one cell.
///
/// For GICv2 the index is the GIC CPU interface number (the bit position in
/// `GICD_ITARGETSR<n>` and `GICD_SGIR.CPUTargetList`, IHI 0048B §4.3.12, §4.3.15), so only
/// CPUs 0..8 can be targeted there. For GICv3 a [`Topology`] maps indices to affinities.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuSet(u64);

impl CpuSet {
    /// The largest number of CPUs a set can hold.
    pub const CAPACITY: usize = 64;

    /// No CPU.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The set whose bit `n` says whether CPU `n` is a member.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// One CPU, or the empty set if `cpu` is out of range.
    pub const fn single(cpu: usize) -> Self {
        if cpu < Self::CAPACITY {
            Self(1 << cpu)
        } else {
            Self(0)
        }
    }

    /// The members as a bitmap (bit `n` for CPU `n`).
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Adds `cpu`; returns `false` (and changes nothing) if it is out of range.
    pub fn insert(&mut self, cpu: usize) -> bool {
        if cpu < Self::CAPACITY {
            self.0 |= 1 << cpu;
            true
        } else {
            false
        }
    }

    /// Removes `cpu` (nothing happens if it is not a member).
    pub fn remove(&mut self, cpu: usize) {
        if cpu < Self::CAPACITY {
            self.0 &= !(1 << cpu);
        }
    }

    /// Whether `cpu` is a member.
    pub const fn contains(self, cpu: usize) -> bool {
        cpu < Self::CAPACITY && self.0 & (1 << cpu) != 0
    }

    /// Whether the set has no member.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The number of members.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether every member of `self` is in `other`.
    pub const fn is_subset_of(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }

    /// The members of both sets.
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The members of `self` that are not in `other`.
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The members in increasing order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let cpu = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(cpu)
        })
    }
}

impl FromIterator<usize> for CpuSet {
    fn from_iter<I: IntoIterator<Item = usize>>(cpus: I) -> Self {
        let mut set = Self::empty();
        for cpu in cpus {
            set.insert(cpu);
        }
        set
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// The affinity of a PE, as in `MPIDR_EL1` (Arm ARM D23.2): Aff0 `[7:0]`, Aff1 `[15:8]`,
/// Aff2 `[23:16]`, Aff3 `[39:32]`. Other bits (MT, U) are dropped.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mpidr(u64);

impl Mpidr {
    const AFFINITY_MASK: u64 = 0xff_00ff_ffff;

    /// The affinity part of an `MPIDR_EL1` value.
    pub const fn from_register(mpidr: u64) -> Self {
        Self(mpidr & Self::AFFINITY_MASK)
    }

    /// Builds an affinity from its four levels.
    pub const fn new(aff3: u8, aff2: u8, aff1: u8, aff0: u8) -> Self {
        Self((aff3 as u64) << 32 | (aff2 as u64) << 16 | (aff1 as u64) << 8 | aff0 as u64)
    }

    /// Affinity level 0 (usually the core within a cluster).
    pub const fn aff0(self) -> u8 {
        self.0 as u8
    }

    /// Affinity level 1.
    pub const fn aff1(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Affinity level 2.
    pub const fn aff2(self) -> u8 {
        (self.0 >> 16) as u8
    }

    /// Affinity level 3.
    pub const fn aff3(self) -> u8 {
        (self.0 >> 32) as u8
    }

    /// The affinity in `MPIDR_EL1` layout; also the layout of `GICD_IROUTER<n>` without IRM
    /// (IHI 0069 §12.9.22) and of `GICR_TYPER[63:32]` shifted down by 32.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Mpidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Mpidr({}.{}.{}.{})",
            self.aff3(),
            self.aff2(),
            self.aff1(),
            self.aff0()
        )
    }
}

/// The machine's CPUs: CPU index `i` has affinity `mpidrs[i]`.
///
/// For GICv3 redistributor emulation the index is also the position of the CPU's
/// redistributor in the redistributor region (the board configuration lists CPUs in that
/// order).
#[derive(Clone, Copy, Debug)]
pub struct Topology<'a> {
    mpidrs: &'a [Mpidr],
}

impl<'a> Topology<'a> {
    /// The CPUs, in hypervisor CPU index order (at most [`CpuSet::CAPACITY`]; more are
    /// ignored).
    pub fn new(mpidrs: &'a [Mpidr]) -> Self {
        let len = mpidrs.len().min(CpuSet::CAPACITY);
        Self {
            mpidrs: &mpidrs[..len],
        }
    }

    /// The number of CPUs.
    pub fn len(&self) -> usize {
        self.mpidrs.len()
    }

    /// Whether there is no CPU at all.
    pub fn is_empty(&self) -> bool {
        self.mpidrs.is_empty()
    }

    /// The CPU index with affinity `mpidr`.
    pub fn cpu_of(&self, mpidr: Mpidr) -> Option<usize> {
        self.mpidrs.iter().position(|&m| m == mpidr)
    }

    /// The affinity of CPU `cpu`.
    pub fn mpidr_of(&self, cpu: usize) -> Option<Mpidr> {
        self.mpidrs.get(cpu).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuset_basics() {
        let mut set: CpuSet = [1, 3, 63].into_iter().collect();
        assert!(!set.insert(64));
        assert_eq!(set.len(), 3);
        assert!(set.contains(3) && !set.contains(2) && !set.contains(200));
        set.remove(3);
        assert_eq!(set.iter().collect::<std::vec::Vec<_>>(), [1, 63]);
        assert!(CpuSet::single(1).is_subset_of(set));
        assert_eq!(set.difference(CpuSet::single(1)), CpuSet::single(63));
        assert_eq!(std::format!("{set:?}"), "{1, 63}");
        assert!(CpuSet::single(64).is_empty());
    }

    #[test]
    fn mpidr_fields_and_topology() {
        let m = Mpidr::from_register(0x8000_0000 | 0x03_0002_0100 | 1 << 24);
        assert_eq!((m.aff3(), m.aff2(), m.aff1(), m.aff0()), (3, 2, 1, 0));
        assert_eq!(m, Mpidr::new(3, 2, 1, 0));
        let cpus = [Mpidr::new(0, 0, 0, 0), Mpidr::new(0, 0, 1, 0)];
        let topology = Topology::new(&cpus);
        assert_eq!(topology.cpu_of(Mpidr::new(0, 0, 1, 0)), Some(1));
        assert_eq!(topology.cpu_of(Mpidr::new(0, 0, 1, 1)), None);
        assert_eq!(topology.mpidr_of(0), Some(cpus[0]));
        assert_eq!(std::format!("{m:?}"), "Mpidr(3.2.1.0)");
    }
}
