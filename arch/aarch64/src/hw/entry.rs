//! Entry points: the Linux arm64 Image header, the primary CPU's entry and the entry of
//! secondary CPUs started through PSCI CPU_ON.
//!
//! Image header layout: Linux `Documentation/arch/arm64/booting.rst` ("Call the kernel
//! image"): code0/code1, text_offset, image_size, flags, three reserved words, the magic
//! "ARM\x64" at offset 56 and a reserved word. flags = 0b0010: little endian, 4 KiB pages,
//! loaded at `text_offset` from a 2 MiB aligned base as close as possible to the start of
//! DRAM (bit 3 clear: the image is not position independent).
//!
//! Both CPUs kinds arrive at EL2 with the MMU off. They run on their main stack through
//! SP_EL0 (`SPSel = 0`, "EL2t") so that exceptions switch to the separate exception stack in
//! SP_EL2 and can report even when the main stack is broken.

core::arch::global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b       0f
    .long   0
    .quad   __image_text_offset
    .quad   __image_size
    .quad   0x2
    .quad   0
    .quad   0
    .quad   0
    .ascii  "ARM\x64"
    .long   0

0:  mov     x19, x0                     // device tree address, if a loader passed one
    msr     daifset, #0xf
    mrs     x1, CurrentEL
    cmp     x1, #(2 << 2)
    b.ne    cellvisor_park_early
    mov     x0, #0
    bl      cellvisor_set_stacks        // CPU 0: its stacks, SPSel = 0
    adrp    x1, __stacks_start          // then the boot stack as its main stack
    add     x1, x1, :lo12:__stacks_start
    ldr     x2, =__boot_stack_slot
    add     x1, x1, x2
    mov     sp, x1                      // SPSel = 0: SP is SP_EL0
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16
    b       1b
2:  mov     x0, x19
    bl      cellvisor_primary_entry
    b       cellvisor_park_early

    .global cellvisor_secondary_entry
cellvisor_secondary_entry:
    msr     daifset, #0xf
    mov     x19, x0                     // PSCI context id: our CPU index
    ldr     x1, =__max_cpus
    cmp     x0, x1
    b.hs    cellvisor_park_early
    bl      cellvisor_set_stacks
    mov     x0, x19
    bl      cellvisor_secondary_entry_rust
    b       cellvisor_park_early

// x0 = CPU index. Sets SP_EL2 to the top of the CPU's exception stack, selects SP_EL0 and
// points it to the top of the CPU's main stack, installs the vectors. A stack's top is the
// end of its slot (guard page, then the stack). Clobbers x1-x3.
cellvisor_set_stacks:
    adrp    x1, __exception_stacks_start
    add     x1, x1, :lo12:__exception_stacks_start
    ldr     x2, =__exception_stack_slot
    madd    x1, x2, x0, x1
    add     x1, x1, x2
    mov     sp, x1                      // SPSel is 1 out of reset: this is SP_EL2
    adrp    x1, __main_stacks_start
    add     x1, x1, :lo12:__main_stacks_start
    ldr     x2, =__stack_slot
    madd    x1, x2, x0, x1
    add     x1, x1, x2
    msr     sp_el0, x1
    msr     spsel, #0
    msr     tpidr_el2, x0
    adrp    x1, cellvisor_vectors
    add     x1, x1, :lo12:cellvisor_vectors
    msr     vbar_el2, x1
    isb
    ret

    .global cellvisor_park_early
// Nothing has enabled an interrupt yet: WFI sleeps for good (WFE may not sleep at all).
cellvisor_park_early:
    wfi
    b       cellvisor_park_early
    .ltorg
"#
);

unsafe extern "C" {
    /// Where PSCI CPU_ON starts secondary CPUs; x0 (the context id) is the CPU index.
    pub fn cellvisor_secondary_entry();
}
