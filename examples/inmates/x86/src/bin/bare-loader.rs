//! `bare-loader`: runs an x86 inmate without a hypervisor, for comparisons (`cargo xtask bench
//! --board qemu-x86` measures `timer-demo` bare and in a cell).
//!
//! A Multiboot (version 1) kernel linked at 1 MiB that a Multiboot loader (QEMU's `-kernel`)
//! starts with two modules: the inmate's flat image, which it copies to physical address 0,
//! and a communication-region page, which it copies to the inmates' communication-region
//! address (`rt::COMM_REGION`, 0x8000_0000; the machine needs RAM there). It masks both
//! 8259 PICs (firmware leaves the PIT's interrupt unmasked; a cell has no PIC) and enters
//! the inmate's first byte as the hypervisor does: 32-bit protected mode, flat segments,
//! paging and interrupts off. The inmate is the same file as the one a cell runs.
//!
//! Anything else than two modules, or another loader magic, stops it with `HLT` after
//! writing `bare-loader: bad modules` on COM1.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod loader {
    /// Where the communication region goes (`rt::COMM_REGION`).
    const COMM_REGION: u32 = 0x8000_0000;
    /// Multiboot header flag: the address fields are valid (the file is flat).
    const FLAGS: u32 = 1 << 16;
    const MAGIC: u32 = 0x1bad_b002;

    core::arch::global_asm!(
        r#"
    .section .multiboot, "a"
    .balign 4
bare_loader_header:
    .long {magic}
    .long {flags}
    .long -({magic} + {flags})
    .long bare_loader_header
    .long bare_loader_header
    .long __loader_end
    .long __loader_bss_end
    .long bare_loader_entry

    .section .text, "ax"
    .code32
    .global bare_loader_entry
bare_loader_entry:
    cli
    cld
    mov esp, offset __loader_stack_top
    // EAX: the loader's magic; EBX: the Multiboot information, whose flags bit 3 says
    // mods_count (+20) and mods_addr (+24) are valid. Each module entry is start, end,
    // string, reserved.
    cmp eax, 0x2badb002
    jne 9f
    test dword ptr [ebx], 1 << 3
    jz 9f
    cmp dword ptr [ebx + 20], 2
    jne 9f
    // Both PICs masked.
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    mov edx, dword ptr [ebx + 24]
    // The communication region first (its copy cannot overlap the image's).
    mov esi, dword ptr [edx + 16]
    mov ecx, dword ptr [edx + 20]
    sub ecx, esi
    mov edi, {comm}
    rep movsb
    // The image to 0: the module lies above the loader, above 1 MiB, so a forward copy
    // reads each byte before it can be overwritten.
    mov esi, dword ptr [edx]
    mov ecx, dword ptr [edx + 4]
    sub ecx, esi
    xor edi, edi
    rep movsb
    xor eax, eax
    xor ebx, ebx
    xor ecx, ecx
    xor edx, edx
    xor esi, esi
    xor edi, edi
    xor ebp, ebp
    jmp eax
9:
    mov esi, offset bare_loader_message
10:
    lodsb
    test al, al
    jz 12f
    mov ah, al
    // Wait for COM1's transmitter (LSR bit 5), then send.
    mov dx, 0x3fd
11:
    in al, dx
    test al, 0x20
    jz 11b
    mov dx, 0x3f8
    mov al, ah
    out dx, al
    jmp 10b
12:
    hlt
    jmp 12b

    .section .rodata
bare_loader_message:
    .asciz "bare-loader: bad modules (two expected: the inmate image, the communication region)\r\n"
"#,
        magic = const MAGIC,
        flags = const FLAGS,
        comm = const COMM_REGION,
    );

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        loop {
            core::hint::spin_loop();
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
