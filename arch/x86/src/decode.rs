//! The few instructions a guest uses on emulated memory-mapped registers, decoded in 64-bit
//! mode: `MOV` between a register and memory (opcodes 88, 89, 8A, 8B) and `MOV` of an
//! immediate to memory (C6 /0, C7 /0), with the operand-size, REX, segment and
//! address-size prefixes (Intel SDM Vol. 2, chapter 2 "Instruction Format"; AMD APM Vol. 3
//! §1.2 and §1.4).
//!
//! The hypervisor knows the accessed address from the nested page fault; it needs the
//! instruction's length, its direction, its size and the register or immediate. That is all
//! this decodes. Linux reaches the local APIC page and the IOAPIC window only with such
//! `MOV`s. A general decoder (iced-x86, yaxpeax-x86) would bring tables many times the size of
//! the whole hypervisor for opcodes no guest uses on a device register.

use core::fmt;

/// The longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// Where a store's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A general-purpose register (0 RAX ... 15 R15), or with [`Access::high_byte`] one of
    /// AH, CH, DH, BH (4 to 7 minus 4).
    Register(u8),
    /// An immediate, sign-extended to the access size.
    Immediate(u64),
}

/// What the instruction does with memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A load into the register (0 RAX ... 15 R15).
    Read(u8),
    /// A store.
    Write(Source),
}

/// One decoded memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The instruction's length in bytes.
    pub len: usize,
    /// The access size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Load or store.
    pub direction: Direction,
    /// An 8-bit register operand without a REX prefix numbered 4 to 7 is AH, CH, DH or BH.
    pub high_byte: bool,
}

/// Why an instruction is not one this decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end (or reach 15) before the instruction does.
    Truncated,
    /// An opcode other than the `MOV` forms (the byte).
    Opcode(u8),
    /// A register operand where memory must be (ModRM mod = 3).
    NotMemory,
    /// C6 or C7 with a ModRM reg field other than 0.
    Extension(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("the instruction is truncated or longer than 15 bytes"),
            Self::Opcode(op) => write!(f, "opcode {op:#04x} is not a MOV to or from memory"),
            Self::NotMemory => f.write_str("the MOV has no memory operand"),
            Self::Extension(reg) => write!(f, "opcode extension /{reg} is not MOV"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Decodes the instruction at the start of `bytes` (64-bit mode, default operand size 32).
pub fn decode(bytes: &[u8]) -> Result<Access, DecodeError> {
    let bytes = &bytes[..bytes.len().min(MAX_LEN)];
    let byte = |at: usize| bytes.get(at).copied().ok_or(DecodeError::Truncated);
    let mut at = 0;
    let mut operand16 = false;
    // Legacy prefixes: operand size, address size, segments, LOCK, REP.
    loop {
        match byte(at)? {
            0x66 => operand16 = true,
            0x67 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0xf0 | 0xf2 | 0xf3 => {}
            _ => break,
        }
        at += 1;
    }
    // REX must come last, right before the opcode.
    let mut rex = 0;
    if byte(at)? & 0xf0 == 0x40 {
        rex = byte(at)?;
        at += 1;
    }
    let (w, r) = (rex & 0x08 != 0, (rex >> 2) & 1);
    let opcode = byte(at)?;
    at += 1;
    let wide = if w {
        8
    } else if operand16 {
        2
    } else {
        4
    };
    let (size, immediate) = match opcode {
        0x88 | 0x8a => (1, false),
        0x89 | 0x8b => (wide, false),
        0xc6 => (1, true),
        0xc7 => (wide, true),
        other => return Err(DecodeError::Opcode(other)),
    };
    let modrm = byte(at)?;
    at += 1;
    let (mode, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    if mode == 3 {
        return Err(DecodeError::NotMemory);
    }
    if immediate && reg != 0 {
        return Err(DecodeError::Extension(reg));
    }
    // SIB and displacement (the address itself is known from the fault).
    let mut sib_base = None;
    if rm == 4 {
        sib_base = Some(byte(at)? & 7);
        at += 1;
    }
    at += match mode {
        0 if rm == 5 || sib_base == Some(5) => 4,
        0 => 0,
        1 => 1,
        _ => 4,
    };
    let direction = if immediate {
        // A 64-bit MOV takes a 32-bit immediate, sign-extended.
        let len = usize::from(size.min(4));
        let mut raw = [0u8; 8];
        for (i, slot) in raw.iter_mut().enumerate().take(len) {
            *slot = byte(at + i)?;
        }
        at += len;
        let value = u64::from_le_bytes(raw);
        let shift = 64 - 8 * len as u32;
        let extended = ((value << shift) as i64 >> shift) as u64;
        let mask = if size == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * u32::from(size))) - 1
        };
        Direction::Write(Source::Immediate(extended & mask))
    } else {
        let register = reg | r << 3;
        match opcode {
            0x88 | 0x89 => Direction::Write(Source::Register(register)),
            _ => Direction::Read(register),
        }
    };
    if at > bytes.len() {
        return Err(DecodeError::Truncated);
    }
    Ok(Access {
        len: at,
        size,
        direction,
        high_byte: size == 1 && rex == 0 && !immediate && (4..8).contains(&reg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(len: usize, size: u8, reg: u8) -> Access {
        Access {
            len,
            size,
            direction: Direction::Read(reg),
            high_byte: false,
        }
    }

    fn write(len: usize, size: u8, source: Source) -> Access {
        Access {
            len,
            size,
            direction: Direction::Write(source),
            high_byte: false,
        }
    }

    #[test]
    fn linux_apic_accesses() {
        // mov eax, [rip + disp32]
        assert_eq!(decode(&[0x8b, 0x05, 1, 2, 3, 4, 0x90]), Ok(read(6, 4, 0)));
        // mov [rax + 0x300], edx (89 90 disp32)
        assert_eq!(
            decode(&[0x89, 0x90, 0, 3, 0, 0]),
            Ok(write(6, 4, Source::Register(2)))
        );
        // mov ds:0xffffffffff5fb0b0, eax (89 04 25 disp32): SIB without base
        assert_eq!(
            decode(&[0x89, 0x04, 0x25, 0xb0, 0xb0, 0x5f, 0xff]),
            Ok(write(7, 4, Source::Register(0)))
        );
        // mov r8d, [r9 + 0x20] (45 8b 41 20)
        assert_eq!(decode(&[0x45, 0x8b, 0x41, 0x20]), Ok(read(4, 4, 8)));
        // mov dword [rdi + rcx*4 + 8], 0x12345678 (c7 44 8f 08 imm32)
        assert_eq!(
            decode(&[0xc7, 0x44, 0x8f, 0x08, 0x78, 0x56, 0x34, 0x12]),
            Ok(write(8, 4, Source::Immediate(0x1234_5678)))
        );
        // mov dword [rbp + 0], 0 (c7 45 00 imm32): rbp needs a disp8
        assert_eq!(
            decode(&[0xc7, 0x45, 0x00, 0, 0, 0, 0]),
            Ok(write(7, 4, Source::Immediate(0)))
        );
    }

    #[test]
    fn sizes_and_prefixes() {
        // 64-bit: mov [rax], r15 (4c 89 38)
        assert_eq!(
            decode(&[0x4c, 0x89, 0x38]),
            Ok(write(3, 8, Source::Register(15)))
        );
        // 16-bit: mov ax, [rbx] (66 8b 03)
        assert_eq!(decode(&[0x66, 0x8b, 0x03]), Ok(read(3, 2, 0)));
        // A segment override and the address-size prefix: mov ecx, fs:[eax] (64 67 8b 08)
        assert_eq!(decode(&[0x64, 0x67, 0x8b, 0x08]), Ok(read(4, 4, 1)));
        // 8-bit: mov [rdx], bh without REX (88 3a) is BH; with REX (40 88 3a) it is DIL.
        assert_eq!(
            decode(&[0x88, 0x3a]),
            Ok(Access {
                high_byte: true,
                ..write(2, 1, Source::Register(7))
            })
        );
        assert_eq!(
            decode(&[0x40, 0x88, 0x3a]),
            Ok(write(3, 1, Source::Register(7)))
        );
        // 64-bit immediates are 32 bits sign-extended: mov qword [rax], -2 (48 c7 00 fe ff ff ff)
        assert_eq!(
            decode(&[0x48, 0xc7, 0x00, 0xfe, 0xff, 0xff, 0xff]),
            Ok(write(7, 8, Source::Immediate(u64::MAX - 1)))
        );
        // 16-bit immediate: mov word [rax], 0x8001 (66 c7 00 01 80)
        assert_eq!(
            decode(&[0x66, 0xc7, 0x00, 0x01, 0x80]),
            Ok(write(5, 2, Source::Immediate(0x8001)))
        );
        // 8-bit immediate: mov byte [rax + 1], 0xff (c6 40 01 ff)
        assert_eq!(
            decode(&[0xc6, 0x40, 0x01, 0xff]),
            Ok(write(4, 1, Source::Immediate(0xff)))
        );
    }

    #[test]
    fn what_is_not_decoded_is_named() {
        assert_eq!(decode(&[0x0f, 0xb1, 0x0a]), Err(DecodeError::Opcode(0x0f)));
        // xchg [rdx], eax
        assert_eq!(decode(&[0x87, 0x02]), Err(DecodeError::Opcode(0x87)));
        assert_eq!(decode(&[0x89, 0xc0]), Err(DecodeError::NotMemory));
        assert_eq!(
            decode(&[0xc7, 0x08, 0, 0, 0, 0]),
            Err(DecodeError::Extension(1))
        );
        assert_eq!(decode(&[0x8b, 0x05, 1, 2]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0xc7, 0x00, 1, 2, 3]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x66; 20]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            DecodeError::Opcode(0x87).to_string(),
            "opcode 0x87 is not a MOV to or from memory"
        );
    }

    #[test]
    fn every_byte_string_decodes_or_is_refused_without_panicking() {
        // A small exhaustive sweep over two-byte prefixes of opcode, ModRM and SIB.
        let mut bytes = [0u8; 16];
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                bytes[0] = first;
                bytes[1] = second;
                bytes[2] = second.wrapping_mul(7);
                if let Ok(access) = decode(&bytes) {
                    assert!(access.len <= MAX_LEN);
                    assert!([1, 2, 4, 8].contains(&access.size));
                }
            }
        }
    }
}
