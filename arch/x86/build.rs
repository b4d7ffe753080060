//! Makes the linker script available to the board crates that link the image: it is copied
//! into this crate's output directory, which becomes a linker search path of every binary
//! that depends on this crate. The board's own build script defines the layout symbols with
//! `--defsym` and passes `-Tcellvisor-x86.ld`.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("link.ld", out.join("cellvisor-x86.ld")).expect("cannot copy link.ld");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=link.ld");
}
