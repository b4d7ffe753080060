//! The second-stage format of this machine, chosen at boot: AMD's nested page tables on SVM,
//! Intel's EPT on VMX. `cellvisor-core` builds every cell's tables in it (one [`Format`] type
//! for the backend, whose value says which).

use cellvisor_paging::{
    Attributes, Descriptor, Entry, Ept, Format, GuestPhysAddr, Level, Npt, PhysAddr,
};

/// NPT or EPT.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SecondStage {
    /// AMD nested paging (the x86-64 long-mode format with guest-physical input).
    Npt(Npt),
    /// Intel extended page tables.
    Ept(Ept),
}

/// Runs `$body` with `$f` bound to the format inside.
macro_rules! with_format {
    ($self:expr, $f:ident => $body:expr) => {
        match $self {
            SecondStage::Npt($f) => $body,
            SecondStage::Ept($f) => $body,
        }
    };
}

impl Format for SecondStage {
    type Input = GuestPhysAddr;
    const NAME: &'static str = "x86 second stage (NPT or EPT)";

    fn input_bits(&self) -> u32 {
        with_format!(self, f => f.input_bits())
    }

    fn output_bits(&self) -> u32 {
        with_format!(self, f => f.output_bits())
    }

    fn start_level(&self) -> Level {
        with_format!(self, f => f.start_level())
    }

    fn block_allowed(&self, level: Level) -> bool {
        with_format!(self, f => f.block_allowed(level))
    }

    fn check_attributes(&self, attributes: Attributes) -> Result<(), &'static str> {
        with_format!(self, f => f.check_attributes(attributes))
    }

    fn encode_table(&self, level: Level, table: PhysAddr) -> Descriptor {
        with_format!(self, f => f.encode_table(level, table))
    }

    fn encode_leaf(&self, level: Level, output: PhysAddr, attributes: Attributes) -> Descriptor {
        with_format!(self, f => f.encode_leaf(level, output, attributes))
    }

    fn decode(&self, level: Level, descriptor: Descriptor) -> Entry {
        with_format!(self, f => f.decode(level, descriptor))
    }

    fn input_offset(&self, input: GuestPhysAddr) -> Option<u64> {
        with_format!(self, f => f.input_offset(input))
    }

    fn offset_input(&self, offset: u64) -> GuestPhysAddr {
        with_format!(self, f => f.offset_input(offset))
    }

    fn root_entries(&self) -> usize {
        with_format!(self, f => f.root_entries())
    }

    fn root_frames(&self) -> usize {
        with_format!(self, f => f.root_frames())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellvisor_paging::LargePages;

    #[test]
    fn each_variant_encodes_as_its_format_does() {
        let attributes = Attributes::RAM_RW;
        let npt = Npt::new(LargePages::ALL);
        let ept = Ept::new(LargePages::ALL);
        let out = PhysAddr::new(0x4020_0000);
        for level in [Level::L1, Level::L2, Level::L3] {
            assert_eq!(
                SecondStage::Npt(npt).encode_leaf(level, out, attributes),
                npt.encode_leaf(level, out, attributes)
            );
            assert_eq!(
                SecondStage::Ept(ept).encode_leaf(level, out, attributes),
                ept.encode_leaf(level, out, attributes)
            );
        }
        // The two formats differ: EPT has no present bit, NPT no read bit.
        assert_ne!(
            SecondStage::Npt(npt).encode_leaf(Level::L3, out, attributes),
            SecondStage::Ept(ept).encode_leaf(Level::L3, out, attributes)
        );
        assert_eq!(SecondStage::Ept(ept).input_bits(), 48);
    }
}
