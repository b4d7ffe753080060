//! Links the demos with the inmate linker script that `cellvisor-inmate`'s build script puts on
//! the linker search path (it also picks the link address). Only for targets without an
//! operating system; host builds compile an empty `main`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Tcellvisor-inmate.ld");
}
