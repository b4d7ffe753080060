//! Links the x86 inmates at guest-physical 0 with `inmate.ld`, as plain static executables
//! (`--no-pie`: every absolute address resolved at link time for address 0, where the
//! hypervisor loads and enters the image). Host builds compile an empty `main`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=inmate.ld");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-search={dir}");
    for arg in ["-Tinmate.ld", "--no-pie"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
