//! Link settings of the Linux program: a static, non-PIE ELF whose code starts at the usual
//! 4 MiB of a static executable. Only for `aarch64-unknown-none` (no operating system as far
//! as Rust knows, Linux system calls by hand); host builds compile an empty `main`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    for arg in ["-Ttext=0x400000", "--no-pie", "-static", "--build-id=none"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
