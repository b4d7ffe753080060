//! The `cellvisor-config` command.

use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cellvisor-config"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn check_passes_the_reference_configurations() {
    let (code, out, err) = run(&[
        "check",
        "platforms/zcu102/config/system.toml",
        "platforms/zcu102/config/demo.toml",
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "platforms/zcu102/config/system.toml: ok (640 bytes)\nplatforms/zcu102/config/demo.toml: ok (224 bytes)\n"
    );
}

#[test]
fn check_lists_every_problem_and_fails() {
    let dir = std::env::temp_dir().join(format!("cellvisor-config-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../platforms/zcu102/config/demo.toml"),
    )
    .unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        demo.replace("size = 0x100_0000", "size = 0x100_0800")
            .replace("irqs = [54]", "irqs = [54, 16]"),
    )
    .unwrap();
    let (code, out, err) = run(&[
        "check",
        "platforms/zcu102/config/system.toml",
        bad.to_str().unwrap(),
    ]);
    assert_eq!((code, out.as_str()), (1, ""));
    let bad = bad.display();
    assert_eq!(
        err,
        format!(
            "{bad}:12:8: memory region 0: size 0x1000800 is not page aligned\n\
             {bad}:7:13: interrupt range 1: line 16 is not a shared peripheral interrupt (32-1019, or 4096-5119 on GICv3)\n\
             2 problems\n"
        )
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn compile_and_decompile() {
    let dir = std::env::temp_dir().join(format!("cellvisor-config-cli2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("demo.bin");
    let (code, out, _) = run(&[
        "compile",
        "platforms/qemu-arm64/config/demo.toml",
        "--system",
        "platforms/qemu-arm64/config/system-gicv3.toml",
        "-o",
        bin.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("{}: 256 bytes\n", bin.display()));
    let (code, out, _) = run(&["decompile", bin.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.starts_with("# cellvisor cell configuration\narchitecture = \"aarch64\"\nname = \"demo\"\ncpus = \"3\"\n"), "{out}");
    std::fs::write(&bin, b"JHCLL").unwrap();
    let (code, _, err) = run(&["decompile", bin.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "{}: header: truncated: 16 bytes needed, 5 present\n",
            bin.display()
        )
    );
    let (code, _, err) = run(&["import-jailhouse", bin.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("too short for a Jailhouse configuration"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
