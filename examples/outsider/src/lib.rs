//! Nothing but the examples (`examples/`): the library crates of cellvisor used from a crate
//! of its own.
