//! The device tree QEMU passes, where QEMU does not model a part of the board the stock tree
//! relies on.
//!
//! QEMU's `xlnx-zcu102` has no ZynqMP platform-management firmware, which on the board
//! provides the clocks, power domains and pin control of the peripherals. The stock tree's
//! UARTs name that firmware's clocks, so Linux's Cadence UART driver waits for them forever:
//! no `ttyPS0`, no console to type into ("unable to open an initial console"), only the early
//! console's output. A board lists such devices in `linux-dtb-fixed-clock`; in the tree QEMU
//! gets, each has a fixed-rate clock of the given frequency instead of its clocks, and
//! neither power domains nor pin control. Only the emulated machine gets this tree: on the
//! board the firmware is there.

use anyhow::{bail, Context as _, Result};
use dtoolkit::model::{DeviceTree, DeviceTreeNode, DeviceTreeProperty};
use dtoolkit::{Node as _, Property as _};

use crate::board::FixedClock;

/// The name of the fixed clock node added under the root.
const CLOCK_NODE: &str = "cellvisor-qemu-clock";

/// `dtb` with the fixed clock of `clock` given to its nodes.
pub fn with_fixed_clock(dtb: &[u8], clock: &FixedClock) -> Result<Vec<u8>> {
    // The hypervisor's check: Linux's trees have names longer than `Fdt::new` accepts.
    let fdt = cellvisor_devicetree::validate(dtb)
        .map_err(|e| anyhow::anyhow!("not a device tree blob: {e}"))?;
    let mut tree = DeviceTree::from_fdt(&fdt);
    let phandle = highest_phandle(&tree.root)
        .checked_add(1)
        .context("no phandle left for the fixed clock")?;
    let fixed = DeviceTreeNode::builder(CLOCK_NODE)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .property(DeviceTreeProperty::new_unchecked(
            "compatible",
            "fixed-clock",
        ))
        .property(DeviceTreeProperty::new_unchecked("#clock-cells", 0u32))
        .property(DeviceTreeProperty::new_unchecked(
            "clock-frequency",
            clock.frequency,
        ))
        .property(DeviceTreeProperty::new_unchecked("phandle", phandle))
        .build();
    if tree.root.child(CLOCK_NODE).is_some() {
        bail!("the tree has a /{CLOCK_NODE} already");
    }
    tree.root.add_child(fixed);
    for path in &clock.nodes {
        let node = tree
            .find_node_mut(path)
            .with_context(|| format!("no node {path} in the device tree"))?;
        // One clock per name (`clock-names`), or one.
        let count = node
            .property("clock-names")
            .map_or(1, |names| names.value().split(|&b| b == 0).count() - 1)
            .max(1);
        let clocks = vec![phandle; count];
        match node.property_mut("clocks") {
            Some(property) => property.set_value(clocks),
            None => node.add_property(DeviceTreeProperty::new_unchecked("clocks", clocks)),
        }
        let pin_control: Vec<String> = node
            .properties()
            .map(|p| p.name().to_owned())
            .filter(|name| name == "power-domains" || name.starts_with("pinctrl-"))
            .collect();
        for name in pin_control {
            node.remove_property(&name);
        }
    }
    Ok(tree.to_dtb())
}

/// The highest `phandle` in the subtree of `node` (0 if none).
fn highest_phandle(node: &DeviceTreeNode) -> u32 {
    let own = node
        .property("phandle")
        .and_then(|p| <[u8; 4]>::try_from(p.value()).ok())
        .map_or(0, u32::from_be_bytes);
    node.children().map(highest_phandle).fold(own, u32::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtoolkit::fdt::Fdt;

    /// A tree like the ZynqMP's: a firmware clock controller and power domain provider, and
    /// a UART that uses both and pin control.
    fn stock() -> Vec<u8> {
        let mut tree = DeviceTree::new();
        let firmware = DeviceTreeNode::builder("firmware")
            .unwrap()
            .property(DeviceTreeProperty::new_unchecked("phandle", 3u32))
            .build();
        let uart = DeviceTreeNode::builder("serial@ff000000")
            .unwrap()
            .property(DeviceTreeProperty::new_unchecked(
                "compatible",
                "cdns,uart-r1p12",
            ))
            .property(DeviceTreeProperty::new_unchecked(
                "clock-names",
                b"uart_clk\0pclk\0".to_vec(),
            ))
            .property(DeviceTreeProperty::new_unchecked(
                "clocks",
                vec![3u32, 56, 3, 31],
            ))
            .property(DeviceTreeProperty::new_unchecked(
                "power-domains",
                vec![12u32, 33],
            ))
            .property(DeviceTreeProperty::new_unchecked(
                "pinctrl-names",
                "default",
            ))
            .property(DeviceTreeProperty::new_unchecked("pinctrl-0", 30u32))
            .build();
        let axi = DeviceTreeNode::builder("axi")
            .unwrap()
            .child(uart)
            .property(DeviceTreeProperty::new_unchecked("phandle", 41u32))
            .build();
        tree.root.add_child(firmware);
        tree.root.add_child(axi);
        tree.to_dtb()
    }

    fn clock(nodes: &[&str]) -> FixedClock {
        FixedClock {
            frequency: 100_000_000,
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    fn words(property: &DeviceTreeProperty) -> Vec<u32> {
        property
            .value()
            .chunks(4)
            .map(|w| u32::from_be_bytes(w.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn the_uart_gets_the_fixed_clock_and_loses_firmware_dependencies() {
        let patched = with_fixed_clock(&stock(), &clock(&["/axi/serial@ff000000"])).unwrap();
        let fdt = Fdt::new(&patched).unwrap();
        let tree = DeviceTree::from_fdt(&fdt);
        let clock = tree.find_node(&format!("/{CLOCK_NODE}")).unwrap();
        assert_eq!(
            clock.property("compatible").unwrap().value(),
            b"fixed-clock\0"
        );
        // One above the highest phandle of the tree (41, in a nested node).
        assert_eq!(words(clock.property("phandle").unwrap()), [42]);
        assert_eq!(
            words(clock.property("clock-frequency").unwrap()),
            [100_000_000]
        );
        assert_eq!(words(clock.property("#clock-cells").unwrap()), [0]);
        let uart = tree.find_node("/axi/serial@ff000000").unwrap();
        assert_eq!(words(uart.property("clocks").unwrap()), [42, 42]);
        let names: Vec<String> = uart.properties().map(|p| p.name().to_owned()).collect();
        assert_eq!(names, ["compatible", "clock-names", "clocks"]);
    }

    #[test]
    fn debians_zcu102_tree_keeps_everything_else() {
        let stock = include_bytes!("../../crates/devicetree/tests/data/zynqmp-zcu102-rev1.0.dtb");
        let uarts = ["/axi/serial@ff000000", "/axi/serial@ff010000"];
        let patched = with_fixed_clock(stock, &clock(&uarts)).unwrap();
        let before = DeviceTree::from_fdt(&cellvisor_devicetree::validate(stock).unwrap());
        let after = DeviceTree::from_fdt(&cellvisor_devicetree::validate(&patched).unwrap());
        for uart in uarts {
            let node = after.find_node(uart).unwrap();
            assert!(node.property("power-domains").is_none(), "{uart}");
            assert!(node.property("pinctrl-0").is_none(), "{uart}");
            assert_eq!(words(node.property("clocks").unwrap()).len(), 2, "{uart}");
        }
        // The rest is as it was: the tree with the clock node removed and the UARTs restored.
        let mut restored = after.clone();
        restored.root.remove_child(CLOCK_NODE).unwrap();
        for uart in uarts {
            let original = before.find_node(uart).unwrap().clone();
            let parent = restored.find_node_mut("/axi").unwrap();
            let name = uart.rsplit('/').next().unwrap();
            *parent.child_mut(name).unwrap() = original;
        }
        assert_eq!(restored, before);
    }

    #[test]
    fn a_missing_node_or_a_bad_blob_is_an_error() {
        let error = with_fixed_clock(&stock(), &clock(&["/axi/serial@ff010000"]))
            .unwrap_err()
            .to_string();
        assert_eq!(error, "no node /axi/serial@ff010000 in the device tree");
        assert!(with_fixed_clock(b"not a tree", &clock(&["/x"])).is_err());
    }
}
