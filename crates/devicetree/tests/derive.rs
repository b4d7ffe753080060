//! The root cell's device tree derivation on trees built to mimic QEMU `virt` and the ZCU102,
//! and on the real ones (`tests/data`: QEMU 10's generated tree, Debian's
//! `zynqmp-zcu102-rev1.0.dtb`).

use cellvisor_devicetree::{
    derive, validate, CellsProblem, Derived, DeviceTreeError, RootResources,
};
use cellvisor_paging::PhysAddr;
use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::{Node, Property};
use vm_fdt::{FdtReserveEntry, FdtWriter};

/// `qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu cortex-a57 -smp 4 -m 1G`
/// (QEMU 10, `dumpdtb=`), packed: the dump's `totalsize` is the whole 1 MiB buffer.
const QEMU_VIRT_GICV3: &[u8] = include_bytes!("data/qemu-virt-gicv3.dtb");
/// Debian's `zynqmp-zcu102-rev1.0.dtb`.
const ZCU102: &[u8] = include_bytes!("data/zynqmp-zcu102-rev1.0.dtb");

/// The CPU ids of the trees here are Arm MPIDR affinities: Aff3 (bits 39:32), Aff2..Aff0
/// (bits 23:0).
const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

fn w(base: u64, size: u64) -> (PhysAddr, u64) {
    (PhysAddr::new(base), size)
}

/// RAM of the QEMU root cell: all of the 1 GiB but the hypervisor (8 MiB at 0x4020_0000).
const QEMU_RAM: [(u64, u64); 2] = [(0x4000_0000, 0x20_0000), (0x40a0_0000, 0x3f60_0000)];
/// Device windows of `platforms/qemu-arm64/config/system-gicv3.toml`.
const QEMU_DEVICES: [(u64, u64); 11] = [
    (0x900_0000, 0x1000),
    (0x901_0000, 0x1000),
    (0x902_0000, 0x1000),
    (0x903_0000, 0x1000),
    (0x904_0000, 0x1000),
    (0xa00_0000, 0x4000),
    (0x1000_0000, 0x2eff_0000),
    (0x3eff_0000, 0x1_0000),
    (0x3f00_0000, 0x100_0000),
    (0x40_1000_0000, 0x1000_0000),
    (0x80_0000_0000, 0x80_0000_0000),
];
/// GICv3 distributor and four 128 KiB redistributors, emulated by the hypervisor.
const QEMU_EMULATED: [(u64, u64); 2] = [(0x800_0000, 0x1_0000), (0x80a_0000, 4 * 0x2_0000)];

/// RAM of the ZCU102 root cell: the low 2 GiB of DDR but the hypervisor (8 MiB at 2 MiB).
const ZCU102_RAM: [(u64, u64); 2] = [(0, 0x20_0000), (0xa0_0000, 0x7f60_0000)];
/// Device windows of `platforms/zcu102/config/system.toml`.
const ZCU102_DEVICES: [(u64, u64); 6] = [
    (0xfd00_0000, 0x80_0000),
    (0xfd82_0000, 0x7e_0000),
    (0xfe00_0000, 0x100_0000),
    (0xff00_0000, 0x1000),
    (0xff01_0000, 0x1000),
    (0xff02_0000, 0x98_0000),
];
/// GIC-400 distributor and CPU interface, emulated by the hypervisor.
const ZCU102_EMULATED: [(u64, u64); 2] = [(0xf901_0000, 0x1_0000), (0xf902_0000, 0x2_0000)];

fn windows(list: &[(u64, u64)]) -> Vec<(PhysAddr, u64)> {
    list.iter().map(|&(base, size)| w(base, size)).collect()
}

/// Derives into a buffer 16 KiB larger than the stock tree; returns the derived tree.
fn run(stock: &[u8], root: &RootResources<'_>) -> (Vec<u8>, Derived) {
    let mut out = vec![0xa5; stock.len() + 16 * 1024];
    let derived = derive(stock, &mut out, root).unwrap_or_else(|e| panic!("{e}"));
    out.truncate(derived.size);
    validate(&out).expect("the derived tree is a valid blob");
    (out, derived)
}

fn node<'a>(fdt: Fdt<'a>, path: &str) -> FdtNode<'a> {
    fdt.find_node(path)
        .unwrap_or_else(|| panic!("{path} is missing"))
}

fn status(fdt: Fdt<'_>, path: &str) -> Option<String> {
    node(fdt, path)
        .property("status")
        .map(|p| p.value_as::<&str>().expect("status is a string").to_owned())
}

fn string(fdt: Fdt<'_>, path: &str, property: &str) -> String {
    node(fdt, path)
        .property(property)
        .unwrap_or_else(|| panic!("{path} has no {property}"))
        .value_as::<&str>()
        .expect("a string")
        .to_owned()
}

/// The (address, size) pairs of a `reg` with the given cell counts.
fn reg(fdt: Fdt<'_>, path: &str, address_cells: usize, size_cells: usize) -> Vec<(u64, u64)> {
    let value = node(fdt, path)
        .property("reg")
        .expect("reg")
        .value()
        .to_vec();
    let cell = |bytes: &[u8]| bytes.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b));
    value
        .chunks_exact((address_cells + size_cells) * 4)
        .map(|entry| {
            let (address, size) = entry.split_at(address_cells * 4);
            (cell(address), cell(size))
        })
        .collect()
}

/// Every node's path, depth first.
fn paths(fdt: Fdt<'_>) -> Vec<String> {
    fn walk(node: FdtNode<'_>, path: String, out: &mut Vec<String>) {
        for child in node.children() {
            let child_path = format!("{path}/{}", child.name());
            out.push(child_path.clone());
            walk(child, child_path, out);
        }
    }
    let mut out = vec!["/".to_owned()];
    walk(fdt.root(), String::new(), &mut out);
    out
}

/// Paths of the nodes that were `okay` in `stock` and are disabled in `derived`.
fn newly_disabled(stock: &[u8], derived: &[u8]) -> Vec<String> {
    let (stock, derived) = (validate(stock).unwrap(), validate(derived).unwrap());
    let enabled = |s: Option<String>| s.is_none_or(|s| s == "okay" || s == "ok");
    paths(derived)
        .into_iter()
        .filter(|path| enabled(status(stock, path)) && !enabled(status(derived, path)))
        .collect()
}

/// A tree like QEMU's `virt` with a GICv3 and four CPUs.
fn qemu_like() -> Vec<u8> {
    const GIC: u32 = 0x8005;
    const ITS: u32 = 0x8006;
    let mut fdt =
        FdtWriter::new_with_mem_reserv(&[FdtReserveEntry::new(0x4800_0000, 0x1000).unwrap()])
            .unwrap();
    let root = fdt.begin_node("").unwrap();
    fdt.property_u32("interrupt-parent", GIC).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_string("compatible", "linux,dummy-virt")
        .unwrap();

    let psci = fdt.begin_node("psci").unwrap();
    fdt.property_string("method", "hvc").unwrap();
    fdt.property_string("compatible", "arm,psci-1.0").unwrap();
    fdt.end_node(psci).unwrap();

    let memory = fdt.begin_node("memory@40000000").unwrap();
    fdt.property_array_u64("reg", &[0x4000_0000, 0x4000_0000])
        .unwrap();
    fdt.property_string("device_type", "memory").unwrap();
    fdt.end_node(memory).unwrap();

    let mmio = |fdt: &mut FdtWriter, name: &str, compatible: &str, reg: &[u64]| {
        let node = fdt.begin_node(name).unwrap();
        fdt.property_string("compatible", compatible).unwrap();
        fdt.property_array_u64("reg", reg).unwrap();
        fdt.end_node(node).unwrap();
    };
    mmio(
        &mut fdt,
        "fw-cfg@9020000",
        "qemu,fw-cfg-mmio",
        &[0x902_0000, 0x18],
    );
    mmio(
        &mut fdt,
        "virtio_mmio@a000000",
        "virtio,mmio",
        &[0xa00_0000, 0x200],
    );
    mmio(
        &mut fdt,
        "virtio_mmio@a000200",
        "virtio,mmio",
        &[0xa00_0200, 0x200],
    );

    let pcie = fdt.begin_node("pcie@10000000").unwrap();
    fdt.property_string("device_type", "pci").unwrap();
    fdt.property_u32("#address-cells", 3).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    fdt.property_array_u32(
        "ranges",
        &[
            0x0200_0000,
            0,
            0x1000_0000,
            0,
            0x1000_0000,
            0,
            0x2eff_0000, //
        ],
    )
    .unwrap();
    fdt.property_array_u64("reg", &[0x40_1000_0000, 0x1000_0000])
        .unwrap();
    fdt.property_array_u32("msi-map", &[0, ITS, 0, 0x1_0000])
        .unwrap();
    // A device on the PCI bus: its own address space, left alone.
    let function = fdt.begin_node("ethernet@1,0").unwrap();
    fdt.property_array_u32("reg", &[0x800, 0, 0, 0, 0]).unwrap();
    fdt.end_node(function).unwrap();
    fdt.end_node(pcie).unwrap();

    mmio(
        &mut fdt,
        "pl031@9010000",
        "arm,pl031",
        &[0x901_0000, 0x1000],
    );
    mmio(
        &mut fdt,
        "pl011@9000000",
        "arm,pl011",
        &[0x900_0000, 0x1000],
    );

    let intc = fdt.begin_node("intc@8000000").unwrap();
    fdt.property_phandle(GIC).unwrap();
    fdt.property_array_u64("reg", &[0x800_0000, 0x1_0000, 0x80a_0000, 0xf6_0000])
        .unwrap();
    fdt.property_string("compatible", "arm,gic-v3").unwrap();
    fdt.property_null("ranges").unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_null("interrupt-controller").unwrap();
    fdt.property_u32("#interrupt-cells", 3).unwrap();
    let its = fdt.begin_node("its@8080000").unwrap();
    fdt.property_phandle(ITS).unwrap();
    fdt.property_array_u64("reg", &[0x808_0000, 0x2_0000])
        .unwrap();
    fdt.property_null("msi-controller").unwrap();
    fdt.property_string("compatible", "arm,gic-v3-its").unwrap();
    fdt.end_node(its).unwrap();
    fdt.end_node(intc).unwrap();

    // Two windows, both outside the root cell.
    mmio(
        &mut fdt,
        "flash@0",
        "cfi-flash",
        &[0, 0x400_0000, 0x400_0000, 0x400_0000],
    );

    let cpus = fdt.begin_node("cpus").unwrap();
    fdt.property_u32("#size-cells", 0).unwrap();
    fdt.property_u32("#address-cells", 1).unwrap();
    let map = fdt.begin_node("cpu-map").unwrap();
    let socket = fdt.begin_node("socket0").unwrap();
    let cluster = fdt.begin_node("cluster0").unwrap();
    for core in 0..4 {
        let node = fdt.begin_node(&format!("core{core}")).unwrap();
        fdt.property_u32("cpu", 0x8004 - core).unwrap();
        fdt.end_node(node).unwrap();
    }
    fdt.end_node(cluster).unwrap();
    fdt.end_node(socket).unwrap();
    fdt.end_node(map).unwrap();
    for cpu in 0..4u32 {
        let node = fdt.begin_node(&format!("cpu@{cpu}")).unwrap();
        fdt.property_phandle(0x8004 - cpu).unwrap();
        fdt.property_u32("reg", cpu).unwrap();
        fdt.property_string("enable-method", "psci").unwrap();
        fdt.property_string("compatible", "arm,cortex-a57").unwrap();
        fdt.property_string("device_type", "cpu").unwrap();
        fdt.end_node(node).unwrap();
    }
    fdt.end_node(cpus).unwrap();

    let timer = fdt.begin_node("timer").unwrap();
    fdt.property_array_u32("interrupts", &[1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4])
        .unwrap();
    fdt.property_string("compatible", "arm,armv8-timer")
        .unwrap();
    fdt.end_node(timer).unwrap();

    let aliases = fdt.begin_node("aliases").unwrap();
    fdt.property_string("serial0", "/pl011@9000000").unwrap();
    fdt.end_node(aliases).unwrap();

    let chosen = fdt.begin_node("chosen").unwrap();
    fdt.property_string("bootargs", "console=ttyAMA0 root=/dev/vda")
        .unwrap();
    fdt.property_string("stdout-path", "/pl011@9000000")
        .unwrap();
    fdt.property_u64("linux,initrd-start", 0x4800_0000).unwrap();
    fdt.property_u64("linux,initrd-end", 0x4880_0000).unwrap();
    fdt.end_node(chosen).unwrap();

    fdt.end_node(root).unwrap();
    fdt.finish().unwrap()
}

struct Root {
    ram: Vec<(PhysAddr, u64)>,
    devices: Vec<(PhysAddr, u64)>,
    emulated: Vec<(PhysAddr, u64)>,
    cpus: Vec<u64>,
}

impl Root {
    fn qemu(cpus: &[u64]) -> Self {
        Self {
            ram: windows(&QEMU_RAM),
            devices: windows(&QEMU_DEVICES),
            emulated: windows(&QEMU_EMULATED),
            cpus: cpus.to_vec(),
        }
    }

    fn zcu102() -> Self {
        Self {
            ram: windows(&ZCU102_RAM),
            devices: windows(&ZCU102_DEVICES),
            emulated: windows(&ZCU102_EMULATED),
            cpus: vec![0, 1, 2, 3],
        }
    }

    fn resources(&self) -> RootResources<'_> {
        RootResources {
            management: None,
            ram: &self.ram,
            devices: &self.devices,
            emulated: &self.emulated,
            cpus: &self.cpus,
            cpu_id_mask: MPIDR_AFFINITY,
        }
    }
}

#[test]
fn qemu_like_memory_is_exactly_the_root_ram() {
    let (out, derived) = run(&qemu_like(), &Root::qemu(&[0, 1, 2, 3]).resources());
    let fdt = validate(&out).unwrap();
    assert_eq!(reg(fdt, "/memory@40000000", 2, 2), QEMU_RAM);
    assert_eq!(derived.memory_ranges, 2);
    assert_eq!(derived.removed_memory_nodes, 0);
}

#[test]
fn qemu_like_foreign_cpus_and_the_cpu_map_are_removed() {
    let (out, derived) = run(&qemu_like(), &Root::qemu(&[0, 1]).resources());
    let fdt = validate(&out).unwrap();
    assert!(fdt.find_node("/cpus/cpu@0").is_some());
    assert!(fdt.find_node("/cpus/cpu@1").is_some());
    assert!(fdt.find_node("/cpus/cpu@2").is_none());
    assert!(fdt.find_node("/cpus/cpu@3").is_none());
    assert!(
        fdt.find_node("/cpus/cpu-map").is_none(),
        "a cpu-map pointing at removed CPUs goes with them"
    );
    assert_eq!(derived.removed_cpus, 2);
    assert!(derived.cpu_map_removed);
    assert_eq!(
        node(fdt, "/cpus/cpu@1")
            .property("phandle")
            .unwrap()
            .value_as::<u32>()
            .unwrap(),
        0x8003
    );
}

#[test]
fn qemu_like_all_cpus_keep_the_cpu_map() {
    let (out, derived) = run(&qemu_like(), &Root::qemu(&[0, 1, 2, 3]).resources());
    let fdt = validate(&out).unwrap();
    for path in ["/cpus/cpu@3", "/cpus/cpu-map/socket0/cluster0/core3"] {
        assert!(fdt.find_node(path).is_some(), "{path}");
    }
    assert_eq!(derived.removed_cpus, 0);
    assert!(!derived.cpu_map_removed);
}

#[test]
fn qemu_like_devices_outside_the_root_cell_are_disabled() {
    let stock = qemu_like();
    let (out, derived) = run(&stock, &Root::qemu(&[0, 1, 2, 3]).resources());
    let fdt = validate(&out).unwrap();
    assert_eq!(
        newly_disabled(&stock, &out),
        ["/intc@8000000/its@8080000", "/flash@0"]
    );
    assert_eq!(derived.disabled_nodes, 2);
    assert_eq!(status(fdt, "/flash@0").as_deref(), Some("disabled"));
    for path in [
        "/pl011@9000000",
        "/pl031@9010000",
        "/fw-cfg@9020000",
        "/virtio_mmio@a000000",
        "/virtio_mmio@a000200",
        "/pcie@10000000",
        "/pcie@10000000/ethernet@1,0",
        "/intc@8000000",
    ] {
        assert_eq!(status(fdt, path), None, "{path}");
    }
}

#[test]
fn qemu_like_everything_else_is_untouched() {
    let stock = qemu_like();
    let (out, _) = run(&stock, &Root::qemu(&[0, 1, 2, 3]).resources());
    let (before, after) = (validate(&stock).unwrap(), validate(&out).unwrap());
    assert_eq!(
        string(after, "/chosen", "bootargs"),
        "console=ttyAMA0 root=/dev/vda"
    );
    for (path, property) in [
        ("/chosen", "stdout-path"),
        ("/chosen", "linux,initrd-start"),
        ("/chosen", "linux,initrd-end"),
        ("/aliases", "serial0"),
        ("/psci", "method"),
        ("/timer", "interrupts"),
        ("/intc@8000000", "reg"),
        ("/intc@8000000", "phandle"),
        ("/intc@8000000/its@8080000", "phandle"),
        ("/pcie@10000000", "ranges"),
        ("/pcie@10000000", "msi-map"),
        ("/", "interrupt-parent"),
    ] {
        let value = |fdt: Fdt<'_>| node(fdt, path).property(property).unwrap().value().to_vec();
        assert_eq!(value(before), value(after), "{path} {property}");
    }
    let reservations: Vec<_> = after
        .memory_reservations()
        .map(|r| (r.address(), r.size()))
        .collect();
    assert_eq!(reservations, [(0x4800_0000, 0x1000)]);
    assert_eq!(
        paths(before).len(),
        paths(after).len(),
        "all CPUs are the root cell's: no node goes"
    );
}

/// A minimal tree: root cells as given (none when `None`), one or more memory nodes, an
/// optional device.
fn small_tree(
    cells: Option<(u32, u32)>,
    memory: &[&str],
    device: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    if let Some((address, size)) = cells {
        fdt.property_u32("#address-cells", address).unwrap();
        fdt.property_u32("#size-cells", size).unwrap();
    }
    for &name in memory {
        let node = fdt.begin_node(name).unwrap();
        fdt.property_string("device_type", "memory").unwrap();
        fdt.property_array_u32("reg", &[0, 0x4000_0000, 0, 0x4000_0000])
            .unwrap();
        fdt.end_node(node).unwrap();
    }
    if let Some((name, reg)) = device {
        let node = fdt.begin_node(name).unwrap();
        fdt.property("reg", reg).unwrap();
        fdt.end_node(node).unwrap();
    }
    let chosen = fdt.begin_node("chosen").unwrap();
    fdt.property_string("bootargs", "quiet").unwrap();
    fdt.end_node(chosen).unwrap();
    fdt.end_node(root).unwrap();
    fdt.finish().unwrap()
}

fn root_with_ram(ram: &[(u64, u64)]) -> Root {
    Root {
        ram: windows(ram),
        devices: Vec::new(),
        emulated: Vec::new(),
        cpus: vec![0],
    }
}

#[test]
fn ram_ranges_are_sorted_and_merged() {
    let stock = small_tree(Some((2, 2)), &["memory@40000000"], None);
    let root = root_with_ram(&[
        (0x9000_0000, 0x1000_0000),
        (0x4100_0000, 0x100_0000),
        (0x4000_0000, 0x20_0000),
        (0x40a0_0000, 0x60_0000),
        (0x1_0000_0000, 0),
        (0x8000_0000, 0x1000_0000),
        (0x8800_0000, 0x100_0000),
    ]);
    let (out, derived) = run(&stock, &root.resources());
    let fdt = validate(&out).unwrap();
    assert_eq!(
        reg(fdt, "/memory@40000000", 2, 2),
        [
            (0x4000_0000, 0x20_0000),
            (0x40a0_0000, 0x160_0000),
            (0x8000_0000, 0x2000_0000),
        ],
        "adjacent and overlapping ranges merge, empty ones vanish"
    );
    assert_eq!(derived.memory_ranges, 3);
}

#[test]
fn root_cells_default_to_two_and_one() {
    // Devicetree Specification v0.4 §2.3.5: #address-cells 2, #size-cells 1 when missing.
    let stock = small_tree(None, &["memory@40000000"], None);
    let root = root_with_ram(&[(0x4000_0000, 0x20_0000), (0x1_0000_0000, 0x1000)]);
    let (out, _) = run(&stock, &root.resources());
    let fdt = validate(&out).unwrap();
    assert_eq!(
        reg(fdt, "/memory@40000000", 2, 1),
        [(0x4000_0000, 0x20_0000), (0x1_0000_0000, 0x1000)]
    );
}

#[test]
fn ram_that_does_not_fit_the_cells_is_an_error() {
    let stock = small_tree(Some((1, 1)), &["memory@40000000"], None);
    let root = root_with_ram(&[(0x1_0000_0000, 0x1000)]);
    let mut out = vec![0; stock.len() + 4096];
    let error = derive(&stock, &mut out, &root.resources()).unwrap_err();
    assert!(matches!(
        error,
        DeviceTreeError::BadCells {
            problem: CellsProblem::RamDoesNotFit { .. },
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        "node /memory@40000000: RAM at 0x100000000 (0x1000 bytes) does not fit \
         #address-cells = 1, #size-cells = 1"
    );
}

#[test]
fn extra_memory_nodes_are_removed() {
    let stock = small_tree(
        Some((2, 2)),
        &["memory@40000000", "memory@80000000", "memory@100000000"],
        None,
    );
    let root = root_with_ram(&[(0x4000_0000, 0x1000)]);
    let (out, derived) = run(&stock, &root.resources());
    let fdt = validate(&out).unwrap();
    assert_eq!(reg(fdt, "/memory@40000000", 2, 2), [(0x4000_0000, 0x1000)]);
    assert!(fdt.find_node("/memory@80000000").is_none());
    assert!(fdt.find_node("/memory@100000000").is_none());
    assert_eq!(derived.removed_memory_nodes, 2);
    assert_eq!(string(fdt, "/chosen", "bootargs"), "quiet");
    assert!(
        derived.size < stock.len(),
        "removed nodes are compacted away"
    );
}

#[test]
fn missing_memory_node_is_an_error() {
    let stock = small_tree(Some((2, 2)), &[], None);
    let mut out = vec![0; stock.len() + 4096];
    let root = root_with_ram(&[(0x4000_0000, 0x1000)]);
    let error = derive(&stock, &mut out, &root.resources()).unwrap_err();
    assert_eq!(error, DeviceTreeError::NoMemoryNode);
    assert_eq!(
        error.to_string(),
        "no memory node (device_type = \"memory\") in /"
    );
}

#[test]
fn root_without_ram_is_an_error() {
    let stock = small_tree(Some((2, 2)), &["memory@0"], None);
    let mut out = vec![0; stock.len() + 4096];
    let root = root_with_ram(&[(0x4000_0000, 0)]);
    let error = derive(&stock, &mut out, &root.resources()).unwrap_err();
    assert_eq!(error, DeviceTreeError::NoRootRam);
}

#[test]
fn reg_of_the_wrong_length_names_the_node() {
    let stock = small_tree(
        Some((2, 2)),
        &["memory@40000000"],
        Some(("uart@9000000", &[0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0x10, 0])),
    );
    let mut out = vec![0; stock.len() + 4096];
    let root = root_with_ram(&[(0x4000_0000, 0x1000)]);
    let error = derive(&stock, &mut out, &root.resources()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "node /uart@9000000: reg is 12 bytes, not a multiple of 16"
    );
}

#[test]
fn trees_nested_too_deep_are_refused() {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    let memory = fdt.begin_node("memory").unwrap();
    fdt.property_string("device_type", "memory").unwrap();
    fdt.end_node(memory).unwrap();
    // 33 levels of identity-mapped buses: the derivation looks at every one of them.
    let buses: Vec<_> = (0..33)
        .map(|_| {
            let bus = fdt.begin_node("bus").unwrap();
            fdt.property_null("ranges").unwrap();
            bus
        })
        .collect();
    for bus in buses.into_iter().rev() {
        fdt.end_node(bus).unwrap();
    }
    fdt.end_node(root).unwrap();
    let stock = fdt.finish().unwrap();

    let mut out = vec![0; stock.len() + 4096];
    let root = root_with_ram(&[(0x4000_0000, 0x1000)]);
    let error = derive(&stock, &mut out, &root.resources()).unwrap_err();
    let DeviceTreeError::TooDeep { node } = &error else {
        panic!("{error:?}");
    };
    // The path (32 x "/bus") is longer than an error keeps: its end stays.
    assert!(node.is_truncated());
    assert_eq!(node.as_str(), "/bus".repeat(16));
    assert_eq!(
        error.to_string(),
        format!(
            "node ...{}: nested deeper than 32 levels",
            "/bus".repeat(16)
        )
    );
}

#[test]
fn out_of_space_is_reported() {
    let stock = qemu_like();
    let root = Root::qemu(&[0, 1, 2, 3]);

    let mut small = vec![0; stock.len() - 1];
    let error = derive(&stock, &mut small, &root.resources()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "out of space: {} bytes needed, the buffer holds {}",
            stock.len(),
            stock.len() - 1
        )
    );

    // Room for the copy, not for the longer memory `reg` (two ranges instead of one).
    let mut exact = vec![0; stock.len()];
    let error = derive(&stock, &mut exact, &root.resources()).unwrap_err();
    assert!(
        matches!(error, DeviceTreeError::OutOfSpace { needed, capacity, .. }
            if needed > capacity && capacity == stock.len()),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("node /memory@40000000: out of space: "),
        "{error}"
    );
}

#[test]
fn malformed_blobs_are_rejected() {
    let good = small_tree(Some((2, 2)), &["memory@40000000"], None);
    let field = |blob: &[u8], offset: usize| {
        u32::from_be_bytes(blob[offset..offset + 4].try_into().unwrap()) as usize
    };
    let set = |blob: &mut Vec<u8>, offset: usize, value: usize| {
        blob[offset..offset + 4].copy_from_slice(&(value as u32).to_be_bytes());
    };
    let (struct_start, strings_start) = (field(&good, 8), field(&good, 12));
    let (strings_size, struct_size) = (field(&good, 32), field(&good, 36));
    let nop = 4;

    let mut cases: Vec<(Vec<u8>, String)> = Vec::new();
    cases.push((vec![0; 64], "at offset 0x0: no devicetree magic".into()));
    let mut blob = good.clone();
    set(&mut blob, 4, good.len() + 4);
    cases.push((
        blob,
        "at offset 0x4: totalsize is not within the blob".into(),
    ));
    let mut blob = good.clone();
    set(&mut blob, 20, 16);
    cases.push((
        blob,
        "at offset 0x14: not compatible with version 17".into(),
    ));
    let mut blob = good.clone();
    set(&mut blob, struct_start, nop);
    cases.push((
        blob,
        format!("at offset {struct_start:#x}: structure block does not start with a node"),
    ));
    let mut blob = good.clone();
    let end = struct_start + struct_size - 4;
    set(&mut blob, end, nop);
    cases.push((
        blob,
        format!("at offset {end:#x}: no FDT_END after the root node"),
    ));
    let mut blob = good.clone();
    blob[strings_start + strings_size - 1] = b'x';
    cases.push((
        blob,
        format!("at offset {strings_start:#x}: strings block is not NUL-terminated UTF-8"),
    ));

    let root = root_with_ram(&[(0x4000_0000, 0x1000)]);
    for (blob, expected) in cases {
        let mut out = vec![0; blob.len() + 4096];
        let error = derive(&blob, &mut out, &root.resources()).unwrap_err();
        assert!(
            matches!(error, DeviceTreeError::InvalidBlob { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("invalid device tree blob {expected}")
        );
    }
}

#[test]
fn names_longer_than_the_spec_allows_are_accepted() {
    // Devicetree Specification v0.4 §2.2.4.1 allows 31 characters; Linux's trees use more,
    // and `dtoolkit`'s own check rejects them.
    assert!(Fdt::new(ZCU102).is_err());
    let fdt = validate(ZCU102).unwrap();
    let usb = node(fdt, "/axi/usb@ff9d0000/usb@fe200000");
    assert!(usb.property("snps,quirk-frame-length-adjustment").is_some());
}

#[test]
fn stock_longer_than_its_totalsize_is_accepted() {
    let mut stock = small_tree(Some((2, 2)), &["memory@40000000"], None);
    let size = stock.len();
    stock.resize(size + 4096, 0xff);
    let root = root_with_ram(&[(0x4000_0000, 0x1000)]);
    let (out, _) = run(&stock, &root.resources());
    assert_eq!(
        reg(validate(&out).unwrap(), "/memory@40000000", 2, 2),
        [(0x4000_0000, 0x1000)]
    );
}

#[test]
fn status_already_set_is_respected_or_rewritten() {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    fdt.property_u32("#address-cells", 1).unwrap();
    fdt.property_u32("#size-cells", 1).unwrap();
    let memory = fdt.begin_node("memory").unwrap();
    fdt.property_string("device_type", "memory").unwrap();
    fdt.property_array_u32("reg", &[0x4000_0000, 0x1000_0000])
        .unwrap();
    fdt.end_node(memory).unwrap();
    for (name, status) in [
        ("serial@1000", Some("disabled")),
        ("serial@2000", Some("okay")),
        ("serial@3000", Some("ok")),
        ("serial@4000", Some("reserved")),
        ("serial@5000", None),
    ] {
        let node = fdt.begin_node(name).unwrap();
        let base = u32::from_str_radix(&name[7..], 16).unwrap();
        fdt.property_array_u32("reg", &[base, 0x100]).unwrap();
        if let Some(status) = status {
            fdt.property_string("status", status).unwrap();
        }
        fdt.end_node(node).unwrap();
    }
    fdt.end_node(root).unwrap();
    let stock = fdt.finish().unwrap();

    let mut root = root_with_ram(&[(0x4000_0000, 0x1000)]);
    root.devices = windows(&[(0x5000, 0x1000)]);
    let (out, derived) = run(&stock, &root.resources());
    let fdt = validate(&out).unwrap();
    assert_eq!(
        derived.disabled_nodes, 2,
        "only the nodes that were okay count"
    );
    for (path, expected) in [
        ("/serial@1000", Some("disabled")),
        ("/serial@2000", Some("disabled")),
        ("/serial@3000", Some("disabled")),
        ("/serial@4000", Some("reserved")),
        ("/serial@5000", None),
    ] {
        assert_eq!(status(fdt, path).as_deref(), expected, "{path}");
    }
    assert_eq!(reg(fdt, "/memory", 1, 1), [(0x4000_0000, 0x1000)]);
}

#[test]
fn cpus_with_two_address_cells_match_aff3() {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    let memory = fdt.begin_node("memory@0").unwrap();
    fdt.property_string("device_type", "memory").unwrap();
    fdt.property_array_u32("reg", &[0, 0, 0x1000]).unwrap();
    fdt.end_node(memory).unwrap();
    let cpus = fdt.begin_node("cpus").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 0).unwrap();
    for mpidr in [0x0u64, 0x100, 0x1_0000_0000, 0x1_0000_0100] {
        let node = fdt.begin_node(&format!("cpu@{mpidr:x}")).unwrap();
        fdt.property_string("device_type", "cpu").unwrap();
        fdt.property_u64("reg", mpidr).unwrap();
        fdt.end_node(node).unwrap();
    }
    let states = fdt.begin_node("idle-states").unwrap();
    fdt.end_node(states).unwrap();
    fdt.end_node(cpus).unwrap();
    fdt.end_node(root).unwrap();
    let stock = fdt.finish().unwrap();

    let mut root = root_with_ram(&[(0, 0x1000)]);
    // Bit 31 of MPIDR_EL1 is RES1 and not part of the affinity.
    root.cpus = vec![0x8000_0100, 0x1_0000_0000];
    let (out, derived) = run(&stock, &root.resources());
    let fdt = validate(&out).unwrap();
    let kept: Vec<_> = node(fdt, "/cpus")
        .children()
        .map(|n| n.name().to_owned())
        .collect();
    assert_eq!(kept, ["cpu@100", "cpu@100000000", "idle-states"]);
    assert_eq!(derived.removed_cpus, 2);
    assert!(!derived.cpu_map_removed, "there is none");
}

/// A tree like the ZCU102's: peripherals on an `/axi` simple-bus with an empty `ranges`.
fn zcu102_like() -> Vec<u8> {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    let cpus = fdt.begin_node("cpus").unwrap();
    fdt.property_u32("#address-cells", 1).unwrap();
    fdt.property_u32("#size-cells", 0).unwrap();
    for cpu in 0..4u32 {
        let node = fdt.begin_node(&format!("cpu@{cpu}")).unwrap();
        fdt.property_string("device_type", "cpu").unwrap();
        fdt.property_u32("reg", cpu).unwrap();
        fdt.end_node(node).unwrap();
    }
    fdt.end_node(cpus).unwrap();

    let reserved = fdt.begin_node("reserved-memory").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    fdt.property_null("ranges").unwrap();
    let pmu = fdt.begin_node("pmu@7ff00000").unwrap();
    fdt.property_array_u64("reg", &[0x7ff0_0000, 0x10_0000])
        .unwrap();
    fdt.property_null("no-map").unwrap();
    fdt.end_node(pmu).unwrap();
    fdt.end_node(reserved).unwrap();

    let axi = fdt.begin_node("axi").unwrap();
    fdt.property_string("compatible", "simple-bus").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    fdt.property_null("ranges").unwrap();
    let device = |fdt: &mut FdtWriter, name: &str, reg: &[u64], status: Option<&str>| {
        let node = fdt.begin_node(name).unwrap();
        fdt.property_array_u64("reg", reg).unwrap();
        if let Some(status) = status {
            fdt.property_string("status", status).unwrap();
        }
        fdt.end_node(node).unwrap();
    };
    device(
        &mut fdt,
        "serial@ff000000",
        &[0xff00_0000, 0x1000],
        Some("okay"),
    );
    device(
        &mut fdt,
        "serial@ff010000",
        &[0xff01_0000, 0x1000],
        Some("okay"),
    );
    device(
        &mut fdt,
        "smmu@fd800000",
        &[0xfd80_0000, 0x2_0000],
        Some("okay"),
    );
    // One window inside the root cell's devices is enough to keep a node.
    device(
        &mut fdt,
        "spi@ff0f0000",
        &[0xff0f_0000, 0x1000, 0xc000_0000, 0x800_0000],
        Some("okay"),
    );
    device(
        &mut fdt,
        "rtc@ffa60000",
        &[0xffa6_0000, 0x100, 0xffa7_0000, 0x100],
        None,
    );
    // Partly inside UART0's window, partly outside any: kept.
    device(&mut fdt, "partial@ff000800", &[0xff00_0800, 0x1000], None);
    let gic = fdt.begin_node("interrupt-controller@f9010000").unwrap();
    fdt.property_null("interrupt-controller").unwrap();
    fdt.property_array_u64(
        "reg",
        &[
            0xf901_0000,
            0x1_0000,
            0xf902_0000,
            0x2_0000,
            0xf904_0000,
            0x2_0000,
        ],
    )
    .unwrap();
    fdt.end_node(gic).unwrap();
    // An I2C controller: its children are bus addresses (no `ranges`).
    let i2c = fdt.begin_node("i2c@ff020000").unwrap();
    fdt.property_array_u64("reg", &[0xff02_0000, 0x1000])
        .unwrap();
    fdt.property_u32("#address-cells", 1).unwrap();
    fdt.property_u32("#size-cells", 0).unwrap();
    let expander = fdt.begin_node("gpio@20").unwrap();
    fdt.property_u32("reg", 0x20).unwrap();
    fdt.end_node(expander).unwrap();
    fdt.end_node(i2c).unwrap();
    // A bus with its own address space (non-empty `ranges`): its children are left alone.
    let cci = fdt.begin_node("cci@fd6e0000").unwrap();
    fdt.property_array_u64("reg", &[0xfd6e_0000, 0x9000])
        .unwrap();
    fdt.property_u32("#address-cells", 1).unwrap();
    fdt.property_u32("#size-cells", 1).unwrap();
    fdt.property_array_u32("ranges", &[0, 0, 0xfd6e_0000, 0x1_0000])
        .unwrap();
    let pmu = fdt.begin_node("pmu@9000").unwrap();
    fdt.property_array_u32("reg", &[0x9000, 0x5000]).unwrap();
    fdt.end_node(pmu).unwrap();
    fdt.end_node(cci).unwrap();
    // An identity bus inside the identity bus: its child is judged like the others.
    let usb = fdt.begin_node("usb@ff9d0000").unwrap();
    fdt.property_array_u64("reg", &[0xff9d_0000, 0x100])
        .unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    fdt.property_null("ranges").unwrap();
    device(&mut fdt, "usb@fe200000", &[0xfe20_0000, 0x4_0000], None);
    device(&mut fdt, "phy@ffb00000", &[0xffb0_0000, 0x1000], None);
    fdt.end_node(usb).unwrap();
    fdt.end_node(axi).unwrap();

    let chosen = fdt.begin_node("chosen").unwrap();
    fdt.property_string("bootargs", "earlycon").unwrap();
    fdt.property_string("stdout-path", "serial0:115200n8")
        .unwrap();
    fdt.end_node(chosen).unwrap();
    let memory = fdt.begin_node("memory@0").unwrap();
    fdt.property_string("device_type", "memory").unwrap();
    fdt.property_array_u64("reg", &[0, 0x8000_0000, 0x8_0000_0000, 0x8000_0000])
        .unwrap();
    fdt.end_node(memory).unwrap();
    fdt.end_node(root).unwrap();
    fdt.finish().unwrap()
}

#[test]
fn zcu102_like_axi_devices_follow_the_root_cell() {
    let stock = zcu102_like();
    let (out, derived) = run(&stock, &Root::zcu102().resources());
    let fdt = validate(&out).unwrap();
    assert_eq!(
        newly_disabled(&stock, &out),
        [
            "/axi/smmu@fd800000",
            "/axi/rtc@ffa60000",
            "/axi/usb@ff9d0000",
            "/axi/usb@ff9d0000/phy@ffb00000",
        ]
    );
    assert_eq!(derived.disabled_nodes, 4);
    for path in [
        "/axi/serial@ff000000",
        "/axi/serial@ff010000",
        "/axi/spi@ff0f0000",
    ] {
        assert_eq!(status(fdt, path).as_deref(), Some("okay"), "{path}");
    }
    assert_eq!(status(fdt, "/axi/partial@ff000800"), None);
    for path in [
        "/reserved-memory/pmu@7ff00000",
        "/axi/interrupt-controller@f9010000",
        "/axi/i2c@ff020000",
        "/axi/i2c@ff020000/gpio@20",
        "/axi/cci@fd6e0000/pmu@9000",
        "/axi/usb@ff9d0000/usb@fe200000",
    ] {
        assert_eq!(status(fdt, path), None, "{path}");
    }
    assert_eq!(reg(fdt, "/memory@0", 2, 2), ZCU102_RAM);
    assert_eq!(string(fdt, "/chosen", "bootargs"), "earlycon");
    assert_eq!(derived.removed_cpus, 0);
}

#[test]
fn qemu_virt_fixture() {
    let root = Root::qemu(&[0, 1, 2, 3]);
    let (out, derived) = run(QEMU_VIRT_GICV3, &root.resources());
    let fdt = validate(&out).unwrap();
    assert_eq!(reg(fdt, "/memory@40000000", 2, 2), QEMU_RAM);
    // The ITS is not the root cell's (no ITS emulation), nor is the flash QEMU maps at 0
    // (secure firmware and the EFI variable store, not given to the root cell).
    assert_eq!(
        newly_disabled(QEMU_VIRT_GICV3, &out),
        ["/intc@8000000/its@8080000", "/flash@0"]
    );
    assert_eq!(derived.disabled_nodes, 2);
    for path in [
        "/pl011@9000000",
        "/pl031@9010000",
        "/pl061@9030000",
        "/fw-cfg@9020000",
        "/virtio_mmio@a000000",
        "/virtio_mmio@a003e00",
        "/pcie@10000000",
        "/intc@8000000",
    ] {
        assert_eq!(status(fdt, path), None, "{path}");
    }
    assert!(node(fdt, "/cpus/cpu-map").children().next().is_some());
    assert_eq!(derived.removed_cpus, 0);
    let stock = validate(QEMU_VIRT_GICV3).unwrap();
    for (path, property) in [("/chosen", "stdout-path"), ("/chosen", "kaslr-seed")] {
        let value = |fdt: Fdt<'_>| node(fdt, path).property(property).unwrap().value().to_vec();
        assert_eq!(value(stock), value(fdt), "{path} {property}");
    }

    // A root cell with two of the four CPUs.
    let root = Root::qemu(&[0, 2]);
    let (out, derived) = run(QEMU_VIRT_GICV3, &root.resources());
    let fdt = validate(&out).unwrap();
    let cpus: Vec<_> = node(fdt, "/cpus")
        .children()
        .map(|n| n.name().to_owned())
        .collect();
    assert_eq!(cpus, ["cpu@0", "cpu@2"]);
    assert_eq!(derived.removed_cpus, 2);
    assert!(derived.cpu_map_removed);
}

#[test]
fn free_space_after_the_strings_is_dropped() {
    // QEMU's tree in memory (and as `dumpdtb` writes it) has a `totalsize` of 1 MiB.
    let mut dump = QEMU_VIRT_GICV3.to_vec();
    dump.resize(1 << 20, 0);
    dump[4..8].copy_from_slice(&(1u32 << 20).to_be_bytes());
    let root = Root::qemu(&[0, 1]);
    // The output buffer is smaller than the stock blob: only the content is copied.
    let mut out = vec![0; QEMU_VIRT_GICV3.len() + 4096];
    let derived = derive(&dump, &mut out, &root.resources()).unwrap();
    let (packed, from_packed) = run(QEMU_VIRT_GICV3, &root.resources());
    assert_eq!(derived, from_packed);
    assert_eq!(&out[..derived.size], &packed[..]);
}

#[test]
fn zcu102_fixture() {
    let (out, derived) = run(ZCU102, &Root::zcu102().resources());
    let fdt = validate(&out).unwrap();
    assert_eq!(reg(fdt, "/memory@0", 2, 2), ZCU102_RAM);
    // Debian's tree already disables the SMMU; it stays so and is not counted.
    assert_eq!(
        status(fdt, "/axi/iommu@fd800000").as_deref(),
        Some("disabled")
    );
    assert_eq!(status(fdt, "/axi/serial@ff000000").as_deref(), Some("okay"));
    assert_eq!(status(fdt, "/axi/serial@ff010000").as_deref(), Some("okay"));
    // The LPD window of the configuration ends at 0xff9a_0000: the USB wrapper (0xff9d_0000)
    // and the RTC (0xffa6_0000) lie above it.
    assert_eq!(
        newly_disabled(ZCU102, &out),
        ["/axi/rtc@ffa60000", "/axi/usb@ff9d0000"]
    );
    assert_eq!(derived.disabled_nodes, 2);
    assert_eq!(derived.removed_cpus, 0);
    assert_eq!(string(fdt, "/chosen", "bootargs"), "earlycon");
    assert!(derived.size <= ZCU102.len() + 2 * 24);
}
