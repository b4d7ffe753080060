//! The reference configurations of the boards compile, pass every cross-check, and
//! decompile to TOML that reads back to the same configurations.

use std::path::{Path, PathBuf};

use cellvisor_config::host::{compile_directory, compile_directory_to, decompile};
use cellvisor_config::text::{cell_from_toml, system_from_toml};
use cellvisor_config::{
    CellConfig, CellConfigView, ConfigKind, InterruptController, SystemConfig, SystemConfigView,
};

fn board(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../platforms")
        .join(name)
        .join("config")
}

fn check_board(name: &str, systems: usize, cells: usize) -> Vec<(PathBuf, ConfigKind, Vec<u8>)> {
    let compiled = compile_directory(&board(name)).unwrap_or_else(|e| panic!("{e}"));
    let count = |kind| compiled.iter().filter(|f| f.kind == kind).count();
    assert_eq!(
        (count(ConfigKind::System), count(ConfigKind::Cell)),
        (systems, cells)
    );
    for file in &compiled {
        let text = decompile(&file.bytes).unwrap();
        let source = std::fs::read_to_string(&file.source).unwrap();
        match file.kind {
            ConfigKind::System => assert_eq!(
                system_from_toml(&text).unwrap(),
                system_from_toml(&source).unwrap()
            ),
            ConfigKind::Cell => assert_eq!(
                cell_from_toml(&text).unwrap(),
                cell_from_toml(&source).unwrap()
            ),
        }
    }
    compiled
        .into_iter()
        .map(|f| (f.source, f.kind, f.bytes))
        .collect()
}

#[test]
fn qemu_arm64() {
    let files = check_board("qemu-arm64", 2, 3);
    let system = files
        .iter()
        .find(|f| f.0.ends_with("system-gicv3.toml"))
        .unwrap();
    let system = SystemConfig::from_bytes(&system.2).unwrap();
    let InterruptController::Gic(gic) = system.interrupt_controller else {
        panic!("no GIC")
    };
    assert_eq!(gic.distributor.base, 0x800_0000);
    assert_eq!(system.root_cell.cpus.len(), 4);
    let demo = files.iter().find(|f| f.0.ends_with("demo.toml")).unwrap();
    let demo = CellConfig::from_bytes(&demo.2).unwrap();
    assert_eq!(demo.cell.cpus.len(), 1);
    assert_eq!(demo.cell.console.unwrap().address, 0x904_0000);
    assert_eq!(demo.cell.irqs[0].first, 40);
}

#[test]
fn zcu102() {
    let files = check_board("zcu102", 1, 2);
    let demo = files.iter().find(|f| f.0.ends_with("demo.toml")).unwrap();
    let demo = CellConfigView::parse(&demo.2).unwrap();
    assert_eq!(demo.cell().console().unwrap().address, 0xff01_0000);
    let system = files.iter().find(|f| f.0.ends_with("system.toml")).unwrap();
    assert!(SystemConfigView::parse(&system.2).is_ok());
}

#[test]
fn binaries_are_written() {
    let out = std::env::temp_dir().join(format!("cellvisor-config-test-{}", std::process::id()));
    let written = compile_directory_to(&board("qemu-arm64"), &out).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "system-gicv2.bin",
            "system-gicv3.bin",
            "demo.bin",
            "linux.bin",
            "ticker.bin"
        ]
    );
    for path in &written {
        assert!(decompile(&std::fs::read(path).unwrap()).is_ok());
    }
    std::fs::remove_dir_all(out).unwrap();
}
