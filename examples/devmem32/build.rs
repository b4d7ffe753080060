//! Link settings of the Linux program: a static, non-PIE ELF at the usual 64 KiB of a 32-bit
//! Arm static executable, its segments 4 KiB aligned (not 64 KiB: a 5 KiB file instead of
//! 70 KiB). Only for `armv7a-none-eabi` (no operating system as far as Rust knows, Linux EABI
//! system calls by hand); host builds compile an empty `main`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    for arg in [
        "--image-base=0x10000",
        "-zmax-page-size=4096",
        "--no-pie",
        "-static",
        "--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
