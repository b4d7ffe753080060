//! Links the demos with the inmate linker script that `cellvisor-inmate`'s build script puts on
//! the linker search path (it also picks the link address), as static position-independent
//! executables: `-pie` turns every absolute address in data into an R_AARCH64_RELATIVE entry
//! of `.rela.dyn`, which the runtime's `_start` applies for the address the image runs at;
//! `-z notext` lets those entries point into read-only sections (the MMU is off, nothing is
//! read-only); `--no-dynamic-linker` leaves out the program interpreter. Only for targets
//! without an operating system; host builds compile an empty `main`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    for arg in [
        "-Tcellvisor-inmate.ld",
        "-pie",
        "--no-dynamic-linker",
        "-znotext",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
