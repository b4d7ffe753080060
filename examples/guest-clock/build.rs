//! Link settings of the Linux program: a static, non-PIE ELF whose code starts at the usual
//! 4 MiB of a static executable. Only for the `-none` targets (`aarch64-unknown-none`,
//! `x86_64-unknown-none`: no operating system as far as Rust knows, Linux system calls by
//! hand); host builds compile an empty `main`. The arguments are the same for both: `-static`
//! and `--no-pie` override the static-PIE default of `x86_64-unknown-none`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    for arg in ["-Ttext=0x400000", "--no-pie", "-static", "--build-id=none"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
