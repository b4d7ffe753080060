# The main demo of `cargo xtask run --demo-linux`: the root cell boots Linux (its own kernel
# with the base initramfs) in the 2-CPU cell of linux.toml, then hands the shell over. The
# cell's console is the second UART, where its /init reports and leaves a shell.
LINUX_DIR=${LINUX_DIR:-/lib/cellvisor/linux}
step linux cellvisor cell linux /etc/cellvisor/linux.toml "$LINUX_DIR/Image" \
    --initrd "$LINUX_DIR/initramfs.cpio.gz" \
    --cmdline "console=ttyAMA0,115200 console=ttyPS0,115200 cellvisor.actions=info"
step list cellvisor cell list
mark "Linux runs in cell guest (its console is the second serial port); cellvisor cell shutdown guest, then destroy guest, end it"
