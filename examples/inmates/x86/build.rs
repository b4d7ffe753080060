//! Links the x86 inmates at guest-physical 0 with `inmate.ld`, as plain static executables,
//! and `bare-loader` at 1 MiB with `bare-loader.ld`
//! (`--no-pie`: every absolute address resolved at link time for address 0, where the
//! hypervisor loads and enters the image). Host builds compile an empty `main`.

/// The package's binaries (`Cargo.toml`): the inmates, linked at 0 with `inmate.ld`, and
/// `bare-loader`, a Multiboot kernel at 1 MiB with `bare-loader.ld`.
const BINS: [&str; 9] = [
    "timer-demo",
    "uart-demo",
    "ipi-wild-demo",
    "stubborn-demo",
    "ioapic-wild-demo",
    "wild-demo",
    "pci-demo",
    "smp-demo",
    "bare-loader",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=inmate.ld");
    println!("cargo:rerun-if-changed=bare-loader.ld");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-search={dir}");
    println!("cargo:rustc-link-arg-bins=--no-pie");
    for bin in BINS {
        let script = if bin == "bare-loader" {
            "bare-loader.ld"
        } else {
            "inmate.ld"
        };
        println!("cargo:rustc-link-arg-bin={bin}=-T{script}");
    }
}
