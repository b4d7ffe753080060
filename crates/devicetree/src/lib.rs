//! # cellvisor-devicetree
//!
//! The root cell's device tree, derived from the board's stock one.
//!
//! A partitioning hypervisor boots Linux as the root cell with the tree the boot loader (or
//! QEMU) gave it, edited so that Linux sees exactly what the root cell's configuration gives
//! it and nothing else. [`derive()`] copies the stock tree into a caller's buffer and edits
//! it in place with `dtoolkit`'s allocation-free [`FdtMut`] over a
//! [`SliceBuffer`](dtoolkit::fdt_mut::SliceBuffer) (an example is in the README):
//!
//! 1. **Memory.** The first memory node (a child of `/` with `device_type = "memory"` or the
//!    node name `memory`, Devicetree Specification v0.4 §3.4) gets a `reg` that lists exactly
//!    the root cell's RAM, sorted, with adjacent and overlapping ranges merged, encoded with
//!    the root's `#address-cells` / `#size-cells` (2 and 1 when absent, §2.3.5). Every other
//!    memory node is removed: the hypervisor's own memory and the RAM other cells will get
//!    must not appear. Per-node properties of the removed nodes (`numa-node-id`,
//!    `hotpluggable`) go with them.
//! 2. **CPUs.** `/cpus/cpu*` nodes (§3.8: `device_type = "cpu"`, `reg` = the CPU id, which on
//!    Arm is the MPIDR affinity and on RISC-V the hart id; ids are compared under
//!    [`RootResources::cpu_id_mask`]) whose id is not one of the root cell's CPUs are
//!    removed. When any CPU is removed, the whole `/cpus/cpu-map` node goes too: the
//!    cpu-map binding (Linux `Documentation/devicetree/bindings/cpu/cpu-topology.txt`)
//!    numbers the `clusterN` / `coreN` children from 0 and readers such as Linux stop at
//!    the first missing number, so removing single `coreN` nodes would hide the CPUs after
//!    the gap, and the in-place editor cannot rename nodes. Without a cpu-map Linux derives
//!    the topology from MPIDR on Arm.
//! 3. **Devices.** A node with a `reg` in the CPU's physical address space (its parent is
//!    `/`, or every ancestor below `/` has an empty `ranges`, which §2.3.8 defines as an
//!    identity mapping) is disabled (`status = "disabled"`, §2.3.4) when none of its `reg`
//!    windows (§2.3.6) lies, even partly, in the root cell's device windows or in the windows
//!    the hypervisor emulates for it. Left alone: `/cpus` and its subtree, memory nodes,
//!    `/reserved-memory` (§3.5) and its subtree, interrupt controllers (nodes with
//!    `interrupt-controller`, §2.4.2.2: the hypervisor emulates them, and their `reg` lists
//!    interface frames it keeps to itself), nodes not `okay` already (§2.3.4: anything but
//!    `"okay"`, or Linux's alias `"ok"`, is not operational), and everything below a node
//!    whose `ranges` is missing (no mapping to the parent, §2.3.8: I2C, SPI, MDIO devices) or
//!    not empty (its own address space, e.g. PCI).
//! 4. Everything else stays as it was: `/chosen`, `/aliases`, the memory reservation block
//!    (§5.3), `psci`, `timer`, phandles.
//!
//! The stock tree is checked first with [`validate`] (chapter 5, but accepting the names
//! longer than 31 characters that Linux's trees carry). Free space after its strings block
//! is dropped; removed nodes and properties become `FDT_NOP` tokens (§5.4.1), compacted
//! away at the end, so [`Derived::size`] is close to the size of the stock tree's content.
//!
//! References to removed or disabled nodes are not chased: a removed CPU's phandle may
//! still appear in an `interrupt-affinity` or `cooling-device` list, and a disabled MSI
//! controller stays in its users' `msi-map` / `msi-parent` (they get no MSIs from it).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

use core::fmt::{self, Write as _};

use dtoolkit::error::{BufferError, FdtMutError};
use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::fdt_mut::{FdtBuffer, FdtMut, FdtNodeMut};
use dtoolkit::{Node, Property, ToPropertyValue};

/// The physical addresses of [`RootResources`].
pub use cellvisor_paging::PhysAddr;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Deepest node nesting (the root at depth 0) the derivation handles. Real trees stay
/// below 10 levels; the bound keeps the recursion and the node positions fixed in size.
pub const MAX_DEPTH: usize = 32;

/// Longest node path an error keeps; of a longer one it keeps the end (the node's own
/// name) and shows `...` for the start. Bounded so that the error stays small.
pub const NODE_PATH_CAPACITY: usize = 64;

/// What the root cell owns, from the system configuration.
#[derive(Clone, Copy, Debug)]
pub struct RootResources<'a> {
    /// RAM of the root cell (physical base, size), any order; identity mapped (IPA == PA).
    pub ram: &'a [(PhysAddr, u64)],
    /// Device MMIO the root cell may access directly (base, size).
    pub devices: &'a [(PhysAddr, u64)],
    /// Register windows the hypervisor emulates for the root cell (GIC distributor,
    /// redistributors, CPU interface): nodes there stay as they are.
    pub emulated: &'a [(PhysAddr, u64)],
    /// CPU ids of the root cell's CPUs, as the `reg` of `/cpus/cpu*` nodes gives them: on
    /// Arm MPIDR affinities (Aff3 in bits 39:32, Aff2..Aff0 in 23:0), on RISC-V hart ids.
    pub cpus: &'a [u64],
    /// The bits of a CPU id that tell CPUs apart: an id in [`cpus`](Self::cpus) and one in
    /// the tree are the same CPU when they agree in these bits. On Arm the MPIDR affinity
    /// fields, `0xff_00ff_ffff` (so that MPIDR_EL1's RES1 bit 31 and its U and MT bits do
    /// not count); on RISC-V `u64::MAX`.
    pub cpu_id_mask: u64,
    /// The hypervisor's management interface (control page base and size, data window base
    /// and size), published as `/chosen/cellvisor,management` (four big-endian 64-bit
    /// values) for the root cell's management tool. `None`: no such property.
    pub management: Option<[u64; 4]>,
}

/// What [`derive()`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Derived {
    /// Total size of the derived tree in the output buffer (its header's `totalsize`).
    pub size: usize,
    /// Device nodes that were enabled and are now `status = "disabled"`.
    pub disabled_nodes: usize,
    /// `/cpus/cpu*` nodes removed.
    pub removed_cpus: usize,
    /// Memory nodes removed (all but the first).
    pub removed_memory_nodes: usize,
    /// Whether `/cpus/cpu-map` was removed (because a CPU was).
    pub cpu_map_removed: bool,
    /// (address, size) entries in the memory node's `reg`: the merged RAM ranges.
    pub memory_ranges: usize,
}

/// A node's full path, for reports (the last [`NODE_PATH_CAPACITY`] bytes of it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePath {
    text: heapless::String<NODE_PATH_CAPACITY, u8>,
    truncated: bool,
}

impl NodePath {
    /// The path, or its end if it is too long.
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// Whether the start of the path was cut.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    fn of(fdt: Fdt<'_>, position: &[usize]) -> Self {
        let path = PathDisplay { fdt, position };
        let mut length = Tail::default();
        // Writing into a `Tail` never fails.
        let _ = write!(length, "{path}");
        let skip = length.seen.saturating_sub(NODE_PATH_CAPACITY);
        let mut tail = Tail {
            skip,
            ..Tail::default()
        };
        let _ = write!(tail, "{path}");
        Self {
            text: tail.text,
            truncated: skip > 0,
        }
    }
}

/// Keeps what is written to it after the first `skip` bytes (whole characters), as far as
/// it fits, and counts all bytes.
#[derive(Default)]
struct Tail {
    skip: usize,
    seen: usize,
    text: heapless::String<NODE_PATH_CAPACITY, u8>,
}

impl fmt::Write for Tail {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            self.seen += c.len_utf8();
            if self.seen > self.skip {
                // A full buffer drops the rest; the count goes on.
                let _ = self.text.push(c);
            }
        }
        Ok(())
    }
}

impl fmt::Display for NodePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.truncated {
            f.write_str("...")?;
        }
        f.write_str(self.as_str())
    }
}

/// A property value that does not fit what its node's position requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellsProblem {
    /// A `#address-cells` / `#size-cells` property that is not one `<u32>` (§2.3.5).
    NotOneCell {
        /// The property.
        property: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The parent's `#address-cells` / `#size-cells` is outside what a 64-bit physical
    /// address space can use.
    Unsupported {
        /// The parent's property.
        property: &'static str,
        /// Its value.
        value: u32,
        /// Smallest value handled.
        min: u32,
        /// Largest value handled.
        max: u32,
    },
    /// A prop-encoded array whose length is not a whole number of entries (§2.3.6).
    NotMultiple {
        /// The property.
        property: &'static str,
        /// Its length in bytes.
        len: usize,
        /// Bytes per entry.
        entry: usize,
    },
    /// A RAM range of the root cell that the root's cell counts cannot encode.
    RamDoesNotFit {
        /// Base of the range.
        base: u64,
        /// Size of the range.
        size: u64,
        /// The root's `#address-cells`.
        address_cells: u32,
        /// The root's `#size-cells`.
        size_cells: u32,
    },
}

impl fmt::Display for CellsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotOneCell { property, len } => {
                write!(f, "{property} is {len} bytes, not one 32-bit cell")
            }
            Self::Unsupported {
                property,
                value,
                min,
                max,
            } => write!(
                f,
                "the parent's {property} is {value}, only {min} to {max} is supported"
            ),
            Self::NotMultiple {
                property,
                len,
                entry,
            } => write!(f, "{property} is {len} bytes, not a multiple of {entry}"),
            Self::RamDoesNotFit {
                base,
                size,
                address_cells,
                size_cells,
            } => write!(
                f,
                "RAM at {base:#x} ({size:#x} bytes) does not fit #address-cells = \
                 {address_cells}, #size-cells = {size_cells}"
            ),
        }
    }
}

/// Why the root cell's device tree could not be derived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceTreeError {
    /// The blob is not a valid flattened devicetree (Devicetree Specification v0.4,
    /// chapter 5).
    InvalidBlob {
        /// Byte offset of the problem in the blob.
        offset: usize,
        /// What is wrong there.
        reason: &'static str,
    },
    /// The output buffer cannot hold the stock tree or an edit of it.
    OutOfSpace {
        /// The node being edited (empty while copying the stock tree).
        node: NodePath,
        /// Bytes needed.
        needed: usize,
        /// Bytes the buffer holds.
        capacity: usize,
    },
    /// The stock tree has no memory node (§3.4: one is required).
    NoMemoryNode,
    /// The root cell has no RAM.
    NoRootRam,
    /// A RAM range of the root cell wraps around the 64-bit address space.
    RootRamWraps {
        /// Base of the range.
        base: u64,
        /// Size of the range.
        size: u64,
    },
    /// A property of the node does not fit its cell counts.
    BadCells {
        /// The node.
        node: NodePath,
        /// What is wrong.
        problem: CellsProblem,
    },
    /// The node is nested deeper than [`MAX_DEPTH`] levels.
    TooDeep {
        /// The node.
        node: NodePath,
    },
    /// The tree changed under the editor (a bug: the derivation found a node it then could
    /// not reach, or the buffer failed in a way other than running out of space).
    Internal(&'static str),
}

impl fmt::Display for DeviceTreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidBlob { offset, reason } => {
                write!(
                    f,
                    "invalid device tree blob at offset {offset:#x}: {reason}"
                )
            }
            Self::OutOfSpace {
                node,
                needed,
                capacity,
            } => {
                if !node.as_str().is_empty() {
                    write!(f, "node {node}: ")?;
                }
                write!(
                    f,
                    "out of space: {needed} bytes needed, the buffer holds {capacity}"
                )
            }
            Self::NoMemoryNode => f.write_str("no memory node (device_type = \"memory\") in /"),
            Self::NoRootRam => f.write_str("the root cell has no RAM"),
            Self::RootRamWraps { base, size } => write!(
                f,
                "root cell RAM at {base:#x} ({size:#x} bytes) wraps around the address space"
            ),
            Self::BadCells { node, problem } => write!(f, "node {node}: {problem}"),
            Self::TooDeep { node } => {
                write!(f, "node {node}: nested deeper than {MAX_DEPTH} levels")
            }
            Self::Internal(what) => write!(f, "device tree editor: {what}"),
        }
    }
}

impl core::error::Error for DeviceTreeError {}

/// Copies `stock` into `out` and edits it into the root cell's device tree (see the crate
/// documentation for the rules).
///
/// `stock` may be longer than the tree (its header's `totalsize` counts), and the tree may
/// end in free space, which is dropped. `out` must hold the stock tree up to the end of its
/// strings block plus what the edits add: a `status` property per disabled node (24 bytes)
/// and the memory node's longer `reg`; the stock size plus 16 KiB is plenty for any board.
/// On error, `out` holds a partly edited tree that must not be used.
pub fn derive(
    stock: &[u8],
    out: &mut [u8],
    root: &RootResources<'_>,
) -> Result<Derived, DeviceTreeError> {
    check_ram(root.ram)?;
    let stock = validate(stock)?.data();
    // Free space after the strings block (QEMU's tree has a `totalsize` of 1 MiB for 8 KiB
    // of content) is not copied: `dtoolkit` moves everything up to `totalsize` on each
    // insertion. `validate` checked the blocks are in order, so the strings come last.
    let used =
        be32(stock, 12).map_or(0, |v| v as usize) + be32(stock, 32).map_or(0, |v| v as usize);
    let stock = &stock[..used];
    let capacity = out.len();
    let Some(copy) = out.get_mut(..used) else {
        return Err(DeviceTreeError::OutOfSpace {
            node: NodePath::default(),
            needed: used,
            capacity,
        });
    };
    copy.copy_from_slice(stock);
    // §5.2: `totalsize` at offset 4.
    copy[4..8].copy_from_slice(&(used as u32).to_be_bytes());
    // `validate` checked what `dtoolkit`'s own check would, but for name lengths.
    let mut fdt = FdtMut::from_slice_unchecked(out);

    let mut derived = Derived {
        memory_ranges: merged_ram(root.ram).count(),
        ..Derived::default()
    };
    let drop_cpu_map = any_cpu_removed(fdt.as_read_only(), root);
    let mut resume = 0;
    loop {
        let mut scan = Scan {
            fdt: fdt.as_read_only(),
            root,
            resume,
            // The root is node 0 and never edited.
            next_index: 1,
            memory_seen: false,
            drop_cpu_map,
            position: [0; MAX_DEPTH],
        };
        let found = scan.tree()?;
        let Some(found) = found else {
            if !scan.memory_seen {
                return Err(DeviceTreeError::NoMemoryNode);
            }
            break;
        };
        let position = &found.position[..found.depth];
        log::debug!(
            "device tree: {} {}",
            found.edit,
            PathDisplay {
                fdt: fdt.as_read_only(),
                position
            }
        );
        let value = MemoryReg::new(fdt.as_read_only(), root.ram);
        let result = with_node(fdt.root_mut(), position, |node| {
            apply(node, found.edit, value)
        })
        .ok_or(DeviceTreeError::Internal(
            "a node found by the scan vanished",
        ))?;
        // Only additions fail, so the node is still there to be named.
        result.map_err(|error| {
            out_of_space(NodePath::of(fdt.as_read_only(), position), error, capacity)
        })?;
        match found.edit {
            Edit::SetMemory => {}
            Edit::Disable => derived.disabled_nodes += 1,
            Edit::Remove(Removal::Memory) => derived.removed_memory_nodes += 1,
            Edit::Remove(Removal::Cpu) => derived.removed_cpus += 1,
            Edit::Remove(Removal::CpuMap) => derived.cpu_map_removed = true,
        }
        // A removed node's place in depth-first order is taken by what followed it; an
        // edited node stays and is done.
        resume = match found.edit {
            Edit::Remove(_) => found.index,
            Edit::SetMemory | Edit::Disable => found.index + 1,
        };
    }
    if let Some(management) = root.management {
        let mut value = [0u8; 32];
        for (chunk, word) in value.chunks_exact_mut(8).zip(management) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        let mut tree_root = fdt.root_mut();
        let Some(mut chosen) = tree_root.child_mut("chosen") else {
            return Err(DeviceTreeError::Internal("the tree has no /chosen node"));
        };
        chosen
            .add_property(MANAGEMENT_PROPERTY, value)
            .map_err(|error| out_of_space(NodePath::default(), error, capacity))?;
    }
    fdt.compact();
    derived.size = fdt.as_read_only().data().len();
    Ok(derived)
}

/// The `/chosen` property naming the management interface.
pub const MANAGEMENT_PROPERTY: &str = "cellvisor,management";

/// Flattened devicetree header size up to `size_dt_struct` (§5.2, version 17).
const HEADER_LEN: usize = 40;
/// §5.2: `magic`.
const FDT_MAGIC: u32 = 0xd00d_feed;
/// §5.2: the version this code reads (and `dtoolkit` writes).
const FDT_VERSION: u32 = 17;
/// §5.4.1: structure block tokens.
const FDT_BEGIN_NODE: u32 = 0x1;
const FDT_END_NODE: u32 = 0x2;
const FDT_PROP: u32 = 0x3;
const FDT_NOP: u32 = 0x4;
const FDT_END: u32 = 0x9;

/// Checks that `blob` is a flattened devicetree (Devicetree Specification v0.4, chapter 5)
/// that `dtoolkit` can walk and edit without tripping over it, and returns a view of its
/// first `totalsize` bytes (`blob` may be longer, e.g. the region a boot loader reserved).
///
/// `dtoolkit::fdt::Fdt::new` also enforces the spec's limit of 31 characters for node and
/// property names (§2.2.1, §2.2.4.1), which the trees Linux ships break (Debian's
/// `zynqmp-zcu102-rev1.0.dtb` has `snps,quirk-frame-length-adjustment`); this check asks
/// for everything else it checks, plus a well-formed strings block (§5.5), which
/// `dtoolkit` walks whole when it adds a property name.
pub fn validate(blob: &[u8]) -> Result<Fdt<'_>, DeviceTreeError> {
    let invalid = |offset, reason| DeviceTreeError::InvalidBlob { offset, reason };
    let header = |index: usize| {
        be32(blob, index * 4)
            .map(|v| v as usize)
            .ok_or(invalid(0, "shorter than a header"))
    };
    if header(0)? != FDT_MAGIC as usize {
        return Err(invalid(0, "no devicetree magic"));
    }
    let total = header(1)?;
    if !(HEADER_LEN..=blob.len()).contains(&total) {
        return Err(invalid(4, "totalsize is not within the blob"));
    }
    let blob = &blob[..total];
    let (struct_start, strings_start, reservations) = (header(2)?, header(3)?, header(4)?);
    let (version, last_compatible) = (header(5)?, header(6)?);
    let (strings_size, struct_size) = (header(8)?, header(9)?);
    if version < FDT_VERSION as usize || last_compatible > FDT_VERSION as usize {
        return Err(invalid(20, "not compatible with version 17"));
    }
    // §5.6: the reservation block is 8-byte aligned, the structure block 4-byte aligned.
    // `dtoolkit` inserts by shifting what follows, so the blocks must come in this order.
    if reservations < HEADER_LEN || !reservations.is_multiple_of(8) || reservations > struct_start {
        return Err(invalid(16, "misplaced memory reservation block"));
    }
    let struct_end = struct_start + struct_size;
    if !struct_start.is_multiple_of(4) || struct_end > strings_start {
        return Err(invalid(8, "misplaced structure block"));
    }
    let strings_end = strings_start + strings_size;
    if strings_end > total {
        return Err(invalid(12, "strings block beyond totalsize"));
    }

    // §5.3: (address, size) pairs of u64, ended by a pair of zeros.
    let mut at = reservations;
    loop {
        if at + 16 > struct_start {
            return Err(invalid(at, "memory reservation block not terminated"));
        }
        at += 16;
        if blob[at - 16..at].iter().all(|&b| b == 0) {
            break;
        }
    }

    // §5.5: NUL-terminated strings.
    let strings = &blob[strings_start..strings_end];
    match strings.split_last() {
        None => {}
        Some((&0, body))
            if body
                .split(|&b| b == 0)
                .all(|s| core::str::from_utf8(s).is_ok()) => {}
        Some(_) => {
            return Err(invalid(
                strings_start,
                "strings block is not NUL-terminated UTF-8",
            ))
        }
    }

    // §5.4: one root node (with an empty name) of properties, then child nodes; FDT_END.
    let token = |at: usize| {
        be32(blob, at)
            .filter(|_| at + 4 <= struct_end)
            .ok_or(invalid(at, "structure block ends early"))
    };
    // A NUL-terminated UTF-8 string starting at `at` and ending before `end`.
    let string = |at: usize, end: usize| {
        let bytes = blob.get(at..end).unwrap_or_default();
        let len = bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(invalid(at, "unterminated string"))?;
        core::str::from_utf8(&bytes[..len]).map_err(|_| invalid(at, "string is not UTF-8"))
    };
    if token(struct_start)? != FDT_BEGIN_NODE {
        return Err(invalid(
            struct_start,
            "structure block does not start with a node",
        ));
    }
    let mut at = struct_start;
    let mut depth = 0usize;
    let mut properties_allowed = false;
    loop {
        let start = at;
        at += 4;
        match token(start)? {
            FDT_BEGIN_NODE => {
                let name = string(at, struct_end)?;
                if name.is_empty() != (depth == 0) {
                    return Err(invalid(at, "a node name is empty, or the root's is not"));
                }
                at = (at + name.len() + 1).next_multiple_of(4);
                depth += 1;
                properties_allowed = true;
            }
            FDT_END_NODE => {
                depth -= 1;
                properties_allowed = false;
                if depth == 0 {
                    return match token(at)? {
                        FDT_END => Ok(Fdt::new_unchecked(blob)),
                        _ => Err(invalid(at, "no FDT_END after the root node")),
                    };
                }
            }
            FDT_PROP => {
                if !properties_allowed {
                    return Err(invalid(start, "property after a child node"));
                }
                let (len, name) = (token(at)? as usize, token(at + 4)? as usize);
                at += 8;
                if name >= strings_size {
                    return Err(invalid(at - 4, "property name beyond the strings block"));
                }
                string(strings_start + name, strings_end)?;
                if at + len > struct_end {
                    return Err(invalid(at, "property value beyond the structure block"));
                }
                at = (at + len).next_multiple_of(4);
            }
            FDT_NOP => {}
            _ => return Err(invalid(start, "unexpected token")),
        }
    }
}

/// The big-endian `u32` at `offset`, if the slice holds it.
fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    match *bytes.get(offset..offset.checked_add(4)?)? {
        [a, b, c, d] => Some(u32::from_be_bytes([a, b, c, d])),
        _ => None,
    }
}

fn check_ram(ram: &[(PhysAddr, u64)]) -> Result<(), DeviceTreeError> {
    for &(base, size) in ram {
        if base.as_u64().checked_add(size).is_none() {
            return Err(DeviceTreeError::RootRamWraps {
                base: base.as_u64(),
                size,
            });
        }
    }
    if ram.iter().all(|&(_, size)| size == 0) {
        return Err(DeviceTreeError::NoRootRam);
    }
    Ok(())
}

fn out_of_space(node: NodePath, error: FdtMutError, capacity: usize) -> DeviceTreeError {
    match error {
        FdtMutError::Resize(BufferError::OutOfSpace { requested, .. }) => {
            DeviceTreeError::OutOfSpace {
                node,
                needed: requested,
                capacity,
            }
        }
        FdtMutError::Resize(BufferError::FdtLimitExceeded { requested }) => {
            DeviceTreeError::OutOfSpace {
                node,
                needed: requested,
                capacity: u32::MAX as usize,
            }
        }
        _ => DeviceTreeError::Internal("the output buffer failed to resize"),
    }
}

/// The root cell's RAM, sorted by address, with adjacent and overlapping ranges merged and
/// empty ones dropped. Needs no allocation: each step picks the lowest range not yet
/// covered, then grows it while another range starts inside or right after it.
fn merged_ram(ram: &[(PhysAddr, u64)]) -> impl Iterator<Item = (u64, u64)> + '_ {
    // `check_ram` made sure no range wraps.
    let ranges = move || {
        ram.iter()
            .filter(|&&(_, size)| size != 0)
            .map(|&(base, size)| (base.as_u64(), base.as_u64().saturating_add(size)))
    };
    let mut covered_to = 0u64;
    let mut first = true;
    core::iter::from_fn(move || {
        let start = ranges()
            .map(|(start, _)| start)
            .filter(|&start| first || start > covered_to)
            .min()?;
        first = false;
        let mut end = start;
        loop {
            let grown = ranges()
                .filter(|&(s, e)| s <= end && e > end)
                .map(|(_, e)| e)
                .max();
            match grown {
                Some(e) => end = e,
                None => break,
            }
        }
        covered_to = end;
        Some((start, end - start))
    })
}

/// One edit the scan asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    /// Replace the first memory node's `reg` with the root cell's RAM.
    SetMemory,
    /// Remove the node and its subtree.
    Remove(Removal),
    /// Set `status = "disabled"`.
    Disable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Removal {
    Memory,
    Cpu,
    CpuMap,
}

impl fmt::Display for Edit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SetMemory => "root cell RAM in",
            Self::Remove(Removal::Memory) => "removed memory node",
            Self::Remove(Removal::Cpu) => "removed CPU",
            Self::Remove(Removal::CpuMap) => "removed",
            Self::Disable => "disabled",
        })
    }
}

/// An edit and where: the node's index in depth-first order and its position (child index
/// at each level below the root).
#[derive(Clone, Copy, Debug)]
struct Found {
    edit: Edit,
    index: usize,
    position: [usize; MAX_DEPTH],
    depth: usize,
}

/// `#address-cells` and `#size-cells` of a node, for the `reg` of its children.
#[derive(Clone, Copy, Debug)]
struct Cells {
    address: u32,
    size: u32,
}

/// Where a node sits, which decides which rule applies to it.
#[derive(Clone, Copy, Debug)]
enum Within {
    /// A child of `/`.
    Root(Cells),
    /// A child of `/cpus`.
    Cpus(Cells),
    /// A child of a bus whose address space is the CPU's (every bus up to `/` has an empty
    /// `ranges`).
    Bus(Cells),
}

/// One depth-first walk over the tree, looking for the first edit at or after `resume`.
///
/// Every rule depends only on the node and its ancestors, and an edit either leaves a node
/// in place (done, and not matched again) or removes it with its subtree; so after each
/// edit a new walk can resume at the right depth-first index without keeping a list of
/// edits, which would need an allocation.
struct Scan<'a, 'r> {
    fdt: Fdt<'a>,
    root: &'r RootResources<'r>,
    resume: usize,
    next_index: usize,
    memory_seen: bool,
    drop_cpu_map: bool,
    position: [usize; MAX_DEPTH],
}

impl<'a> Scan<'a, '_> {
    fn tree(&mut self) -> Result<Option<Found>, DeviceTreeError> {
        let root = self.fdt.root();
        let cells = self.cells(root, 0)?;
        self.children(root, 0, Within::Root(cells))
    }

    fn children(
        &mut self,
        node: FdtNode<'a>,
        depth: usize,
        within: Within,
    ) -> Result<Option<Found>, DeviceTreeError> {
        for (index, child) in node.children().enumerate() {
            if depth == MAX_DEPTH {
                return Err(DeviceTreeError::TooDeep {
                    node: self.path(depth),
                });
            }
            self.position[depth] = index;
            if let Some(found) = self.visit(child, depth + 1, within)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn visit(
        &mut self,
        node: FdtNode<'a>,
        depth: usize,
        within: Within,
    ) -> Result<Option<Found>, DeviceTreeError> {
        let index = self.next_index;
        self.next_index += 1;
        let report = index >= self.resume;
        let (edit, children) = match within {
            Within::Root(cells) => self.root_child(node, depth, cells, report)?,
            Within::Cpus(cells) => (self.cpus_child(node, depth, cells, report)?, None),
            Within::Bus(cells) => self.device(node, depth, cells, report)?,
        };
        if let Some(edit) = edit.filter(|_| report) {
            return Ok(Some(Found {
                edit,
                index,
                position: self.position,
                depth,
            }));
        }
        match children {
            Some(within) => self.children(node, depth, within),
            None => Ok(None),
        }
    }

    fn root_child(
        &mut self,
        node: FdtNode<'a>,
        depth: usize,
        cells: Cells,
        report: bool,
    ) -> Result<(Option<Edit>, Option<Within>), DeviceTreeError> {
        let name = node.name();
        if name == "cpus" {
            // §3.7: the CPU nodes' `reg` uses /cpus' cells.
            return Ok((None, Some(Within::Cpus(self.cells(node, depth)?))));
        }
        if node.name_without_address() == "reserved-memory" {
            return Ok((None, None));
        }
        if is_memory(node) {
            if self.memory_seen {
                return Ok((Some(Edit::Remove(Removal::Memory)), None));
            }
            self.memory_seen = true;
            if report {
                self.check_memory_cells(depth, cells)?;
            }
            return Ok((Some(Edit::SetMemory), None));
        }
        self.device(node, depth, cells, report)
    }

    fn cpus_child(
        &self,
        node: FdtNode<'a>,
        depth: usize,
        cells: Cells,
        report: bool,
    ) -> Result<Option<Edit>, DeviceTreeError> {
        if !report {
            return Ok(None);
        }
        if is_cpu(node) {
            let id = cpu_id(node, cells).map_err(|problem| self.bad(depth, problem))?;
            let foreign = id.is_some_and(|id| !owns_cpu(self.root, id));
            return Ok(foreign.then_some(Edit::Remove(Removal::Cpu)));
        }
        Ok(
            (self.drop_cpu_map && node.name() == "cpu-map")
                .then_some(Edit::Remove(Removal::CpuMap)),
        )
    }

    /// Rule 3 for a node in the CPU's address space, plus whether its children are too.
    fn device(
        &self,
        node: FdtNode<'a>,
        depth: usize,
        cells: Cells,
        report: bool,
    ) -> Result<(Option<Edit>, Option<Within>), DeviceTreeError> {
        // §2.3.8: an empty `ranges` maps the children's addresses 1:1 to ours; a missing
        // one means they are not memory-mapped at all, a non-empty one translates them.
        let identity = node
            .property("ranges")
            .is_some_and(|r| r.value().is_empty());
        let children = if identity {
            Some(Within::Bus(self.cells(node, depth)?))
        } else {
            None
        };
        if !report {
            return Ok((None, children));
        }
        let Some(reg) = node.property("reg") else {
            return Ok((None, children));
        };
        if node.property("interrupt-controller").is_some() || !is_enabled(node) {
            return Ok((None, children));
        }
        let windows =
            Windows::new(reg.value(), cells).map_err(|problem| self.bad(depth, problem))?;
        let mut windows = windows.peekable();
        if windows.peek().is_none() {
            return Ok((None, children));
        }
        let root = self.root;
        let owned = windows.any(|window| {
            root.devices
                .iter()
                .chain(root.emulated)
                .any(|&(base, size)| overlaps(window, (base.as_u64(), size)))
        });
        Ok(((!owned).then_some(Edit::Disable), children))
    }

    /// The root's cells must encode every RAM range (§3.4: the memory node's `reg` uses
    /// them).
    fn check_memory_cells(&self, depth: usize, cells: Cells) -> Result<(), DeviceTreeError> {
        check_range("#address-cells", cells.address, 1, 2).map_err(|p| self.bad(depth, p))?;
        check_range("#size-cells", cells.size, 1, 2).map_err(|p| self.bad(depth, p))?;
        for (base, size) in merged_ram(self.root.ram) {
            if !fits(base, cells.address) || !fits(size, cells.size) {
                return Err(self.bad(
                    depth,
                    CellsProblem::RamDoesNotFit {
                        base,
                        size,
                        address_cells: cells.address,
                        size_cells: cells.size,
                    },
                ));
            }
        }
        Ok(())
    }

    /// `#address-cells` / `#size-cells` of `node` (at `depth`).
    fn cells(&self, node: FdtNode<'a>, depth: usize) -> Result<Cells, DeviceTreeError> {
        read_cells(node).map_err(|problem| self.bad(depth, problem))
    }

    fn path(&self, depth: usize) -> NodePath {
        NodePath::of(self.fdt, &self.position[..depth])
    }

    fn bad(&self, depth: usize, problem: CellsProblem) -> DeviceTreeError {
        DeviceTreeError::BadCells {
            node: self.path(depth),
            problem,
        }
    }
}

/// Whether any `/cpus/cpu*` node is not the root cell's (then `cpu-map` goes, see the
/// crate documentation). Malformed CPU nodes count as kept here; the scan reports them.
fn any_cpu_removed(fdt: Fdt<'_>, root: &RootResources<'_>) -> bool {
    let Some(cpus) = fdt.root().children().find(|n| n.name() == "cpus") else {
        return false;
    };
    let Ok(cells) = read_cells(cpus) else {
        return false;
    };
    cpus.children()
        .filter(|&n| is_cpu(n))
        .any(|cpu| matches!(cpu_id(cpu, cells), Ok(Some(id)) if !owns_cpu(root, id)))
}

/// Whether the root cell has the CPU with id `id` (bits outside
/// [`RootResources::cpu_id_mask`], such as the RES1 bit 31 of MPIDR_EL1, do not count).
fn owns_cpu(root: &RootResources<'_>, id: u64) -> bool {
    let mask = root.cpu_id_mask;
    root.cpus.iter().any(|&cpu| cpu & mask == id & mask)
}

/// `#address-cells` / `#size-cells` of `node`, 2 and 1 when absent (§2.3.5).
fn read_cells(node: FdtNode<'_>) -> Result<Cells, CellsProblem> {
    let read = |property: &'static str, default: u32| match node.property(property) {
        None => Ok(default),
        Some(p) => match *p.value() {
            [a, b, c, d] => Ok(u32::from_be_bytes([a, b, c, d])),
            _ => Err(CellsProblem::NotOneCell {
                property,
                len: p.value().len(),
            }),
        },
    };
    Ok(Cells {
        address: read("#address-cells", 2)?,
        size: read("#size-cells", 1)?,
    })
}

/// §3.4: a memory node is a child of `/` named `memory` (with or without unit address) or
/// with `device_type = "memory"`.
fn is_memory(node: FdtNode<'_>) -> bool {
    node.name_without_address() == "memory"
        || node
            .property("device_type")
            .is_some_and(|p| p.value() == b"memory\0")
}

/// §3.8: a CPU node is named `cpu` and has `device_type = "cpu"`; either will do.
fn is_cpu(node: FdtNode<'_>) -> bool {
    node.name_without_address() == "cpu"
        || node
            .property("device_type")
            .is_some_and(|p| p.value() == b"cpu\0")
}

/// §2.3.4: no `status` means `"okay"`; Linux also takes `"ok"`. Anything else (disabled,
/// reserved, fail) is not operational and left as it is.
fn is_enabled(node: FdtNode<'_>) -> bool {
    node.property("status")
        .is_none_or(|p| matches!(p.value(), b"okay\0" | b"ok\0"))
}

/// The CPU id of a `/cpus/cpu*` node: the first element of its `reg` (§3.8: one element per
/// hardware thread, `#address-cells` of `/cpus` each). On Arm it is the MPIDR affinity, the
/// upper cell holding Aff3 when there are two.
fn cpu_id(node: FdtNode<'_>, cells: Cells) -> Result<Option<u64>, CellsProblem> {
    let Some(reg) = node.property("reg") else {
        return Ok(None);
    };
    check_range("#address-cells", cells.address, 1, 2)?;
    let entry = cells.address as usize * 4;
    let value = reg.value();
    if !value.len().is_multiple_of(entry) {
        return Err(CellsProblem::NotMultiple {
            property: "reg",
            len: value.len(),
            entry,
        });
    }
    Ok(value.get(..entry).map(read_be))
}

fn check_range(property: &'static str, value: u32, min: u32, max: u32) -> Result<(), CellsProblem> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(CellsProblem::Unsupported {
            property,
            value,
            min,
            max,
        })
    }
}

/// A big-endian number of one or two cells.
fn read_be(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0, |value, &b| (value << 8) | u64::from(b))
}

fn fits(value: u64, cells: u32) -> bool {
    cells >= 2 || value <= u64::from(u32::MAX)
}

/// Whether `window` and `region` (base, size) share a byte. A window of size 0 (a `reg`
/// without sizes) counts as its first byte.
fn overlaps(window: (u64, u64), region: (u64, u64)) -> bool {
    let (start, end) = (
        u128::from(window.0),
        u128::from(window.0) + u128::from(window.1.max(1)),
    );
    let (region_start, region_end) = (
        u128::from(region.0),
        u128::from(region.0) + u128::from(region.1),
    );
    start < region_end && region_start < end
}

/// The (address, size) windows of a `reg` (§2.3.6).
struct Windows<'a> {
    chunks: core::slice::ChunksExact<'a, u8>,
    address_bytes: usize,
}

impl<'a> Windows<'a> {
    fn new(reg: &'a [u8], cells: Cells) -> Result<Self, CellsProblem> {
        check_range("#address-cells", cells.address, 1, 2)?;
        check_range("#size-cells", cells.size, 0, 2)?;
        let address_bytes = cells.address as usize * 4;
        let entry = address_bytes + cells.size as usize * 4;
        if !reg.len().is_multiple_of(entry) {
            return Err(CellsProblem::NotMultiple {
                property: "reg",
                len: reg.len(),
                entry,
            });
        }
        Ok(Self {
            chunks: reg.chunks_exact(entry),
            address_bytes,
        })
    }
}

impl Iterator for Windows<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let (address, size) = self.chunks.next()?.split_at(self.address_bytes);
        Some((read_be(address), read_be(size)))
    }
}

/// The memory node's new `reg`: the merged RAM ranges in the root's cells (checked to fit
/// by the scan before the edit).
#[derive(Clone, Copy)]
struct MemoryReg<'r> {
    ram: &'r [(PhysAddr, u64)],
    cells: Cells,
}

impl<'r> MemoryReg<'r> {
    fn new(fdt: Fdt<'_>, ram: &'r [(PhysAddr, u64)]) -> Self {
        let cells = read_cells(fdt.root()).unwrap_or(Cells {
            address: 2,
            size: 1,
        });
        Self { ram, cells }
    }

    fn entry_len(&self) -> usize {
        (self.cells.address + self.cells.size) as usize * 4
    }
}

impl ToPropertyValue for MemoryReg<'_> {
    fn property_value_len(&self) -> usize {
        merged_ram(self.ram).count() * self.entry_len()
    }

    fn write_property_value(&self, buffer: &mut [u8]) {
        let address_bytes = self.cells.address as usize * 4;
        // The scan allows 1 or 2 cells each before it asks for this edit.
        let entry_len = self.entry_len().max(1);
        for ((base, size), entry) in merged_ram(self.ram).zip(buffer.chunks_exact_mut(entry_len)) {
            let (address, length) = entry.split_at_mut(address_bytes);
            write_be(address, base);
            write_be(length, size);
        }
    }
}

/// Writes the low `out.len()` bytes of `value`, big endian (one or two cells).
fn write_be(out: &mut [u8], value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.len().saturating_sub(out.len());
    out.copy_from_slice(&bytes[skip..]);
}

/// Applies one edit to the node.
fn apply<B: FdtBuffer>(
    mut node: FdtNodeMut<'_, B>,
    edit: Edit,
    memory: MemoryReg<'_>,
) -> Result<(), FdtMutError> {
    match edit {
        Edit::SetMemory => match node.property_mut("reg") {
            Some(mut reg) => reg.set_value(memory),
            None => node.add_property("reg", memory).map(drop),
        },
        Edit::Remove(_) => {
            node.remove();
            Ok(())
        }
        Edit::Disable => match node.property_mut("status") {
            Some(mut status) => status.set_value("disabled"),
            None => node.add_property("status", "disabled").map(drop),
        },
    }
}

/// Runs `edit` on the node at `position` (child index at each level) below `node`.
///
/// `dtoolkit` hands out mutable nodes only by walking from the root, each borrowing its
/// parent, hence the recursion.
fn with_node<B: FdtBuffer, R>(
    mut node: FdtNodeMut<'_, B>,
    position: &[usize],
    edit: impl FnOnce(FdtNodeMut<'_, B>) -> R,
) -> Option<R> {
    let Some((&first, rest)) = position.split_first() else {
        return Some(edit(node));
    };
    let mut children = node.children_mut();
    let mut index = 0;
    while let Some(child) = children.next() {
        if index == first {
            return with_node(child, rest, edit);
        }
        index += 1;
    }
    None
}

/// Writes the path of the node at `position` without storing it.
struct PathDisplay<'a, 'p> {
    fdt: Fdt<'a>,
    position: &'p [usize],
}

impl fmt::Display for PathDisplay<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.position.is_empty() {
            return f.write_str("/");
        }
        let mut node = self.fdt.root();
        for &index in self.position {
            let Some(child) = node.children().nth(index) else {
                return f.write_str("/?");
            };
            write!(f, "/{}", child.name())?;
            node = child;
        }
        Ok(())
    }
}
