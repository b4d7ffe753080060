//! A cell configuration with `cellvisor-config` (feature `toml`): TOML for people, the
//! binary the hypervisor parses in place, and an error that names the item and the reason.

use cellvisor_config::text::cell_from_toml;
use cellvisor_config::CellConfigView;

const CELL: &str = r#"
    architecture = "aarch64"
    name = "rt"
    cpus = [3]
    irqs = [40]
    console = { type = "pl011", address = 0x904_0000 }

    [[memory]]
    phys = 0x7f00_0000
    virt = 0
    size = 0x100_0000
    flags = ["read", "write", "execute", "dma", "loadable"]

    [[memory]]
    phys = 0x904_0000
    size = 0x1000
    flags = ["read", "write", "io"]
"#;

fn main() {
    let cell = cell_from_toml(CELL).expect("a valid cell");
    let bytes = cell.encode().expect("encodes");
    let view = CellConfigView::parse(&bytes).expect("parses in place");
    println!(
        "cell {:?}: {} bytes, {} memory regions",
        view.cell().name(),
        bytes.len(),
        view.cell().memory_regions().count()
    );
    let broken = CELL.replace("size = 0x1000", "size = 0x1001");
    let error = cell_from_toml(&broken)
        .expect("TOML reads")
        .encode()
        .map(|bytes| CellConfigView::parse(&bytes).map(|_| ()))
        .expect("encodes");
    let error = error.expect_err("not page aligned");
    println!("broken cell: {error}");
    assert_eq!(
        error.to_string(),
        "memory region 1: size 0x1001 is not page aligned"
    );
}
