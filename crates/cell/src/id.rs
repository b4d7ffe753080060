//! Cell ids: [`CellId`] is `cellvisor-abi`'s, the one every cellvisor crate uses.

pub use cellvisor_abi::CellId;
