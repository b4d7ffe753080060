//! The root cell's device tree derivation (`devicetree::derive`, with `validate` in front of
//! it) on stock trees the fuzzer makes.
//!
//! Input: a 64-byte prefix choosing the root cell's resources (RAM, device windows, emulated
//! windows, CPUs, management property) and the output buffer's size, then a device tree
//! blob. If the prefix's first byte is odd, the blob is also parsed, edited with the
//! operations in the bytes after its `totalsize` (8 bytes each: remove, duplicate, move,
//! rename or nest a node, add one, set or delete a property with values chosen to sit on the
//! derivation's edges) and written again, so that mutations of real trees (seed the corpus
//! with `seeds.sh`) stay trees.
//!
//! Checked on every input: no panic (libFuzzer's `-timeout` catches a loop); when
//! `derive` succeeds, the output is a valid tree whose header says its size, whose only
//! memory node lists exactly the merged RAM, with no CPU node of another cell's CPU, and
//! deriving it again changes nothing more.

#![no_main]

use arbitrary::{Result, Unstructured};
use cellvisor_devicetree::{self as devicetree, Derived, RootResources};
use cellvisor_paging::PhysAddr;
use dtoolkit::fdt::FdtNode;
use dtoolkit::{Node as _, Property as _};
use libfuzzer_sys::fuzz_target;

const PREFIX: usize = 64;

/// A node of the tree model the structure-aware mode edits.
#[derive(Clone, Debug)]
struct Tree {
    name: String,
    properties: Vec<(String, Vec<u8>)>,
    children: Vec<Tree>,
}

impl Tree {
    fn from_fdt(node: FdtNode<'_>) -> Self {
        Self {
            name: node.name().to_owned(),
            properties: node
                .properties()
                .map(|p| (p.name().to_owned(), p.value().to_vec()))
                .collect(),
            children: node.children().map(Self::from_fdt).collect(),
        }
    }

    fn count(&self) -> usize {
        1 + self.children.iter().map(Self::count).sum::<usize>()
    }

    /// The node with depth-first index `index` (0 is this one).
    fn nth_mut(&mut self, index: usize) -> Option<&mut Tree> {
        if index == 0 {
            return Some(self);
        }
        let mut rest = index - 1;
        for child in &mut self.children {
            let count = child.count();
            if rest < count {
                return child.nth_mut(rest);
            }
            rest -= count;
        }
        None
    }

    fn set(&mut self, name: &str, value: Vec<u8>) {
        match self.properties.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.properties.push((name.to_owned(), value)),
        }
    }
}

/// Writes a version-17 blob (Devicetree Specification v0.4, chapter 5).
fn write_blob(root: &Tree, reservations: &[(u64, u64)]) -> Vec<u8> {
    let mut strings: Vec<u8> = Vec::new();
    let mut structure: Vec<u8> = Vec::new();
    fn token(out: &mut Vec<u8>, value: u32) {
        out.extend_from_slice(&value.to_be_bytes());
    }
    fn pad(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    fn node(tree: &Tree, structure: &mut Vec<u8>, strings: &mut Vec<u8>) {
        token(structure, 1);
        structure.extend_from_slice(tree.name.as_bytes());
        structure.push(0);
        pad(structure);
        for (name, value) in &tree.properties {
            let offset = find_or_add(strings, name);
            token(structure, 3);
            token(structure, value.len() as u32);
            token(structure, offset as u32);
            structure.extend_from_slice(value);
            pad(structure);
        }
        for child in &tree.children {
            node(child, structure, strings);
        }
        token(structure, 2);
    }
    fn find_or_add(strings: &mut Vec<u8>, name: &str) -> usize {
        let mut at = 0;
        for s in strings.split(|&b| b == 0) {
            if s == name.as_bytes() && at < strings.len() {
                return at;
            }
            at += s.len() + 1;
        }
        let offset = strings.len();
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
        offset
    }
    node(root, &mut structure, &mut strings);
    token(&mut structure, 9);

    let reservations_at = 40usize;
    let struct_at = reservations_at + 16 * (reservations.len() + 1);
    let strings_at = struct_at + structure.len();
    let total = strings_at + strings.len();
    let mut blob = Vec::with_capacity(total);
    for value in [
        0xd00d_feed,
        total as u32,
        struct_at as u32,
        strings_at as u32,
        reservations_at as u32,
        17,
        16,
        0,
        strings.len() as u32,
        structure.len() as u32,
    ] {
        token(&mut blob, value);
    }
    for &(address, size) in reservations.iter().chain([&(0, 0)]) {
        blob.extend_from_slice(&address.to_be_bytes());
        blob.extend_from_slice(&size.to_be_bytes());
    }
    blob.extend_from_slice(&structure);
    blob.extend_from_slice(&strings);
    blob
}

const NODE_NAMES: [&str; 14] = [
    "memory",
    "memory@40000000",
    "cpus",
    "cpu@0",
    "cpu@100",
    "cpu-map",
    "reserved-memory",
    "chosen",
    "soc",
    "pl011@9000000",
    "intc@8000000",
    "pcie@10000000",
    "cluster0",
    "a-node-name-far-longer-than-the-thirty-one-characters-of-the-spec",
];

const STATUS: [&[u8]; 5] = [b"okay\0", b"ok\0", b"disabled\0", b"", b"fail\0"];

/// One 8-byte editing operation on the tree.
fn edit(tree: &mut Tree, op: &[u8]) {
    let count = tree.count();
    let at = usize::from(u16::from_le_bytes([op[1], op[2]])) % count;
    let other = usize::from(op[3]) % count;
    let word = u32::from_be_bytes([op[4], op[5], op[6], op[7]]);
    let cells = |n: u8| ((n % 5) as usize) * 4;
    match op[0] % 12 {
        // Remove a node (not the root).
        0 if at > 0 => remove(tree, at),
        // Duplicate a node as its own child (or the root's child).
        1 => {
            if let Some(copy) = tree.nth_mut(at).cloned() {
                if let Some(parent) = tree.nth_mut(other) {
                    parent.children.push(copy);
                }
            }
        }
        // Rename.
        2 if at > 0 => {
            if let Some(node) = tree.nth_mut(at) {
                node.name = NODE_NAMES[usize::from(op[4]) % NODE_NAMES.len()].to_owned();
            }
        }
        // Add a child with a `reg`.
        3 => {
            if let Some(node) = tree.nth_mut(at) {
                let len = cells(op[3]) + cells(op[4]);
                let reg = (0..len).map(|i| op[4 + i % 4] ^ (i as u8)).collect();
                node.children.push(Tree {
                    name: NODE_NAMES[usize::from(op[5]) % NODE_NAMES.len()].to_owned(),
                    properties: vec![("reg".to_owned(), reg)],
                    children: Vec::new(),
                });
            }
        }
        // Nest: wrap the node in `op[3] % 40` levels of buses with an empty `ranges`.
        4 if at > 0 => {
            if let Some(node) = tree.nth_mut(at) {
                for _ in 0..op[3] % 40 {
                    let inner = std::mem::replace(
                        node,
                        Tree {
                            name: "bus".to_owned(),
                            properties: vec![("ranges".to_owned(), Vec::new())],
                            children: Vec::new(),
                        },
                    );
                    node.children.push(inner);
                }
            }
        }
        5 => set(
            tree,
            at,
            "#address-cells",
            small_cells(word).to_be_bytes().to_vec(),
        ),
        6 => set(
            tree,
            at,
            "#size-cells",
            small_cells(word).to_be_bytes().to_vec(),
        ),
        7 => {
            let len = cells(op[3]) * 2 + cells(op[3] / 5);
            let reg = (0..len).map(|i| op[4 + i % 4]).collect();
            set(tree, at, "reg", reg);
        }
        8 => {
            let ranges = if op[3] & 1 == 0 {
                Vec::new()
            } else {
                op[4..].to_vec()
            };
            set(tree, at, "ranges", ranges);
        }
        9 => set(
            tree,
            at,
            "status",
            STATUS[usize::from(op[3]) % STATUS.len()].to_vec(),
        ),
        10 => {
            let (name, value): (&str, &[u8]) = match op[3] % 4 {
                0 => ("device_type", b"memory\0"),
                1 => ("device_type", b"cpu\0"),
                2 => ("interrupt-controller", b""),
                _ => ("device_type", b"memory"),
            };
            set(tree, at, name, value.to_vec());
        }
        // Delete a property.
        _ => {
            if let Some(node) = tree.nth_mut(at) {
                if !node.properties.is_empty() {
                    let index = usize::from(op[3]) % node.properties.len();
                    node.properties.remove(index);
                }
            }
        }
    }
}

/// Cell counts on the edges: 0..=3 mostly, sometimes anything.
fn small_cells(word: u32) -> u32 {
    if word & 0x80 == 0 {
        word % 4
    } else {
        word
    }
}

fn set(tree: &mut Tree, at: usize, name: &str, value: Vec<u8>) {
    if let Some(node) = tree.nth_mut(at) {
        node.set(name, value);
    }
}

fn remove(tree: &mut Tree, index: usize) {
    let mut rest = index - 1;
    for i in 0..tree.children.len() {
        let count = tree.children[i].count();
        if rest == 0 {
            tree.children.remove(i);
            return;
        }
        if rest < count {
            return remove(&mut tree.children[i], rest);
        }
        rest -= count;
    }
}

/// The root cell's resources, from the prefix.
struct Resources {
    ram: Vec<(PhysAddr, u64)>,
    devices: Vec<(PhysAddr, u64)>,
    emulated: Vec<(PhysAddr, u64)>,
    cpus: Vec<u64>,
    management: Option<[u64; 4]>,
    spare: usize,
}

/// The trees' CPU ids are Arm MPIDR affinities: Aff3 (bits 39:32), Aff2..Aff0 (bits 23:0).
const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

/// MPIDRs of the stock trees' CPUs (QEMU virt, ZynqMP, big.LITTLE, Aff3, with bit 31).
const MPIDRS: [u64; 8] = [0, 1, 2, 3, 0x100, 0x101, 0x1_0000_0000, 0x8000_0000];
const BASES: [u64; 8] = [
    0x4000_0000,
    0x0,
    0x0900_0000,
    0x0800_0000,
    0xff00_0000,
    0xf900_0000,
    0x1_0000_0000,
    0x8_0000_0000,
];

fn range(u: &mut Unstructured<'_>) -> Result<(PhysAddr, u64)> {
    let base = match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        _ => BASES[u.int_in_range(0..=7)?] + u64::from(u.arbitrary::<u16>()?) * 0x1000,
    };
    let size = match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        _ => u64::from(u.arbitrary::<u16>()?) * 0x1000,
    };
    Ok((PhysAddr::new(base), size))
}

fn resources(prefix: &[u8]) -> Result<Resources> {
    let mut u = Unstructured::new(prefix);
    let _mode: u8 = u.arbitrary()?;
    let ranges = |u: &mut Unstructured<'_>, max| -> Result<Vec<_>> {
        (0..u.int_in_range(0..=max)?).map(|_| range(u)).collect()
    };
    let ram = ranges(&mut u, 3)?;
    let devices = ranges(&mut u, 3)?;
    let emulated = ranges(&mut u, 2)?;
    let mask: u8 = u.arbitrary()?;
    let cpus = (0..8)
        .filter(|i| mask & 1 << i != 0)
        .map(|i| MPIDRS[i])
        .collect();
    let management = if u.arbitrary()? {
        Some([0x4100_0000, 0x1000, 0x4100_1000, 0x10_0000])
    } else {
        None
    };
    let spare = match u.int_in_range(0..=7)? {
        0 => usize::from(u.arbitrary::<u8>()?),
        1 => 0,
        _ => 16 * 1024,
    };
    Ok(Resources {
        ram,
        devices,
        emulated,
        cpus,
        management,
        spare,
    })
}

/// The merged RAM the memory node must list: sorted, adjacent and overlapping ranges
/// joined, empty ones dropped.
fn merged(ram: &[(PhysAddr, u64)]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = ram
        .iter()
        .filter(|r| r.1 != 0)
        .map(|&(base, size)| (base.as_u64(), base.as_u64() + size))
        .collect();
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |v, &b| v << 8 | u64::from(b))
}

fn cells_of(node: FdtNode<'_>, name: &str, default: u32) -> u32 {
    node.property(name)
        .map_or(default, |p| be(p.value()) as u32)
}

/// The derived tree: valid, the memory node holds the RAM, no foreign CPU is left.
fn check_output(tree: &[u8], derived: &Derived, root: &RootResources<'_>) {
    let fdt = devicetree::validate(tree)
        .unwrap_or_else(|e| panic!("derive produced an invalid tree: {e}"));
    assert_eq!(
        fdt.data().len(),
        derived.size,
        "totalsize is not the derived size"
    );
    let top = fdt.root();
    let (address_cells, size_cells) = (
        cells_of(top, "#address-cells", 2),
        cells_of(top, "#size-cells", 1),
    );
    let memory: Vec<FdtNode<'_>> = top
        .children()
        .filter(|n| n.name() != "cpus" && n.name_without_address() != "reserved-memory")
        .filter(|n| {
            n.name_without_address() == "memory"
                || n.property("device_type")
                    .is_some_and(|p| p.value() == b"memory\0")
        })
        .collect();
    assert_eq!(memory.len(), 1, "{} memory nodes left", memory.len());
    let reg = memory[0]
        .property("reg")
        .expect("the memory node has a reg");
    let entry = (address_cells + size_cells) as usize * 4;
    let listed: Vec<(u64, u64)> = reg
        .value()
        .chunks(entry)
        .map(|c| {
            let (a, s) = c.split_at(address_cells as usize * 4);
            (be(a), be(s))
        })
        .collect();
    assert_eq!(
        listed,
        merged(root.ram),
        "the memory node's reg is not the root cell's RAM"
    );
    assert_eq!(derived.memory_ranges, listed.len());
    if let Some(cpus) = top.children().find(|n| n.name() == "cpus") {
        let cells = cells_of(cpus, "#address-cells", 2) as usize;
        for cpu in cpus.children() {
            let is_cpu = cpu.name_without_address() == "cpu"
                || cpu
                    .property("device_type")
                    .is_some_and(|p| p.value() == b"cpu\0");
            let Some(reg) = cpu.property("reg").filter(|_| is_cpu) else {
                continue;
            };
            let Some(id) = reg.value().get(..cells * 4).map(be) else {
                continue;
            };
            let mask = root.cpu_id_mask;
            assert!(
                root.cpus.iter().any(|&m| m & mask == id & mask),
                "CPU node {} ({id:#x}) is not the root cell's",
                cpu.name()
            );
        }
    }
}

fn derive_and_check(blob: &[u8], r: &Resources) {
    let root = RootResources {
        ram: &r.ram,
        devices: &r.devices,
        emulated: &r.emulated,
        cpus: &r.cpus,
        cpu_id_mask: MPIDR_AFFINITY,
        management: r.management,
    };
    let mut out = vec![0u8; blob.len().min(1 << 20) + r.spare];
    let Ok(derived) = devicetree::derive(blob, &mut out, &root) else {
        return;
    };
    let tree = &out[..derived.size];
    check_output(tree, &derived, &root);

    // Again: nothing left to remove or disable.
    let again = RootResources {
        management: None,
        ..root
    };
    let mut second = vec![0u8; tree.len() + 16 * 1024];
    match devicetree::derive(tree, &mut second, &again) {
        Ok(d) => {
            assert_eq!(
                (
                    d.disabled_nodes,
                    d.removed_cpus,
                    d.removed_memory_nodes,
                    d.cpu_map_removed
                ),
                (0, 0, 0, false),
                "deriving the derived tree changed it again: {d:?}"
            );
            check_output(&second[..d.size], &d, &again);
        }
        Err(e) => panic!("the derived tree does not derive again: {e}"),
    }
}

fn run(data: &[u8]) {
    let mut prefix = [0u8; PREFIX];
    let n = data.len().min(PREFIX);
    prefix[..n].copy_from_slice(&data[..n]);
    let Ok(resources) = resources(&prefix) else {
        return;
    };
    let blob = data.get(PREFIX..).unwrap_or_default();
    derive_and_check(blob, &resources);

    if prefix[0] & 1 == 0 {
        return;
    }
    let Ok(fdt) = devicetree::validate(blob) else {
        return;
    };
    let mut tree = Tree::from_fdt(fdt.root());
    let ops = &blob[fdt.data().len()..];
    for op in ops.chunks_exact(8).take(16) {
        edit(&mut tree, op);
    }
    let edited = write_blob(&tree, &[]);
    derive_and_check(&edited, &resources);
}

fuzz_target!(|data: &[u8]| run(data));
