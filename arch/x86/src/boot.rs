//! From the Multiboot loader to Rust in long mode on the boot CPU.
//!
//! A Multiboot (version 1) loader enters `cellvisor_entry32` in 32-bit protected mode with
//! paging off, `EAX` = 0x2BADB002 and `EBX` = the Multiboot information (Multiboot
//! Specification 0.6.96 §3.2). The header below uses the address fields (flag 16), so the
//! loader takes the flat binary as it is and needs no 32-bit ELF.
//!
//! The entry zeroes `.bss`, maps the first 4 GiB one to one with 2 MiB pages (enough for the
//! image, the loader's data and the local APIC and IOAPIC pages, which are uncached), turns on
//! PAE, long mode
//! (`EFER.LME`) and paging, loads a GDT with a 64-bit code segment and jumps to `entry64`,
//! which sets the stack and calls [`crate::rust_entry`] with the Multiboot magic and
//! information address. Intel SDM Vol. 3A §9.8.5 lists these steps.

use core::arch::global_asm;

/// Multiboot header magic.
pub const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
/// What the loader leaves in `EAX`.
pub const MULTIBOOT_LOADER_MAGIC: u32 = 0x2bad_b002;
/// Header flags: memory information (bit 1) and the address fields (bit 16).
const MULTIBOOT_FLAGS: u32 = 1 << 1 | 1 << 16;

global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 4
multiboot_header:
    .long {magic}
    .long {flags}
    .long {checksum}
    .long multiboot_header
    .long __image_start
    .long __data_end
    .long __bss_end
    .long cellvisor_entry32

    .section .bss.boot_tables, "aw", @nobits
    .balign 4096
    .global cellvisor_boot_pml4
cellvisor_boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096

    .section .rodata
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_end:
    .global cellvisor_boot_gdtr
cellvisor_boot_gdtr:
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .text.boot, "ax"
    .code32
    .global cellvisor_entry32
cellvisor_entry32:
    cli
    cld
    mov esi, eax
    mov ebp, ebx

    // .bss is zero (the loader clears up to bss_end_addr), but not by every loader's word.
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    shr ecx, 2
    xor eax, eax
    rep stosd

    // 4 GiB one to one: PML4[0] -> PDPT, PDPT[0..4] -> four page directories of 2 MiB pages.
    mov eax, offset boot_pdpt
    or eax, 0x3
    mov dword ptr [cellvisor_boot_pml4], eax
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd
    or eax, 0x3
    mov dword ptr [boot_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jne 2b
    xor ecx, ecx
3:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [boot_pd + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jne 3b
    // The IOAPIC's (0xfec00000) and the local APIC's (0xfee00000) 2 MiB: uncached (PCD, PWT).
    or dword ptr [boot_pd + 0x7f6 * 8], 0x18
    or dword ptr [boot_pd + 0x7f7 * 8], 0x18

    mov eax, offset cellvisor_boot_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    // EFER.LME, and EFER.NXE: the nested page tables' NX bit (regions without "execute")
    // is reserved, and every access through it faults, unless the host's NXE is set.
    mov ecx, 0xc0000080
    rdmsr
    or eax, 1 << 8 | 1 << 11
    wrmsr
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax

    lgdt [boot_gdtr]
    mov eax, offset entry64
    push 0x08
    push eax
    retf

    .code64
entry64:
    mov rsp, offset __boot_stack_top
    call cellvisor_flat_segments
    // The upper halves are undefined after the switch: zero-extend magic and information.
    mov edi, esi
    mov esi, ebp
    call {rust_entry}
4:
    cli
    hlt
    jmp 4b

    // The data segments of the hypervisor's GDT, FS and GS null: every CPU once it is in
    // long mode (the boot CPU here, the others from smp.rs). Clobbers EAX.
    .global cellvisor_flat_segments
cellvisor_flat_segments:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    ret
"#,
    magic = const MULTIBOOT_MAGIC,
    flags = const MULTIBOOT_FLAGS,
    checksum = const 0u32.wrapping_sub(MULTIBOOT_MAGIC).wrapping_sub(MULTIBOOT_FLAGS),
    rust_entry = sym crate::rust_entry,
);
