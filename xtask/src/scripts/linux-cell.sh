# Linux in a cell: `cellvisor cell linux` boots Debian's kernel (the root cell's own) in the
# 2-CPU cell of linux.toml with the base initramfs; its /init reports its CPUs and RAM on the
# cell's UART, takes its second CPU off and on, and powers the cell off (PSCI SYSTEM_OFF: the cell shuts down, not the
# machine). Meanwhile the root cell copies the kernel image over and over, a job of its own.
# Then five boot/destroy cycles must not lose hypervisor memory.
LINUX_CONFIG=${LINUX_CONFIG:-/etc/cellvisor/linux.toml}
LINUX_DIR=${LINUX_DIR:-/lib/cellvisor/linux}
LINUX_CELL=guest
# Its /init's job: its CPUs and RAM, its second CPU off and on again (PSCI CPU_OFF and
# CPU_ON inside the cell), then the power-off.
LINUX_ARGS="cellvisor.actions=info,hotplug:1,poweroff"

# linux_wait: waits (up to 60 s) until the cell no longer runs; leaves its last state in
# $state.
linux_wait() {
    demo_cell=$CELL
    CELL=$LINUX_CELL
    tries=0
    state=$(cell_state)
    while [ "$state" = running ] && [ $tries -lt 60 ]; do
        sleep 1
        tries=$((tries + 1))
        state=$(cell_state)
    done
    CELL=$demo_cell
}

# linux_boot CMDLINE [ACTIONS]: boots the cell (its /init's job: ACTIONS, else $LINUX_ARGS);
# waits until it shut itself down.
linux_boot() {
    cellvisor cell linux "$LINUX_CONFIG" "$LINUX_DIR/Image" \
        --initrd "$LINUX_DIR/initramfs.cpio.gz" --cmdline "$1 ${2:-$LINUX_ARGS}" || return 1
    linux_wait
}

# A raw binary from the same command (--raw): raw-demo runs from the device tree in x0 alone,
# starts its second CPU and lets it switch itself off (PSCI CPU_ON, CPU_OFF, AFFINITY_INFO),
# counts timer interrupts through the GIC, resets its cell once (PSCI SYSTEM_RESET: the cell
# restarts, not the machine) and then powers it off (its lines go to the cell's UART).
linux_raw() {
    cellvisor cell linux "$LINUX_CONFIG" "$INMATES/raw-demo.bin" --raw || return 1
    linux_wait
}
step linux-raw linux_raw
mark "linux raw state=$state"
step linux-raw-destroy cellvisor cell destroy "$LINUX_CELL"

# The kernel's reboot (PSCI SYSTEM_RESET): it cannot restart in place, so the cell stops in
# state reset, and `cell linux --watch` loads and starts it again. Its /init reboots at
# once every time; after its third boot the cell is destroyed, which ends the watch.
linux_watch() {
    rm -f /tmp/linux-watch
    cellvisor cell linux "$LINUX_CONFIG" "$LINUX_DIR/Image" \
        --initrd "$LINUX_DIR/initramfs.cpio.gz" --cmdline "quiet cellvisor.actions=reboot" \
        --watch >/tmp/linux-watch 2>&1 &
    watcher=$!
    tries=0
    while ! grep -q "(boot 3)" /tmp/linux-watch && [ $tries -lt 90 ]; do
        sleep 1
        tries=$((tries + 1))
    done
    cellvisor cell destroy "$LINUX_CELL" >/dev/null
    wait $watcher
    watch_status=$?
    cat /tmp/linux-watch
    grep -q "(boot 3)" /tmp/linux-watch && [ $watch_status = 0 ]
}
step linux-watch linux_watch

rm -f /tmp/root-job
(
    rounds=0
    while [ ! -e /tmp/linux-cell-done ]; do
        dd if="$LINUX_DIR/Image" of=/dev/null bs=65536 2>/dev/null
        rounds=$((rounds + 1))
    done
    echo "$rounds" >/tmp/root-job
) &
job=$!
step linux-boot linux_boot "console=ttyAMA0,115200 console=ttyPS0,115200"
mark "linux state=$state"
step linux-destroy cellvisor cell destroy "$LINUX_CELL"
echo done >/tmp/linux-cell-done
wait $job
rounds=$(cat /tmp/root-job)
mark "linux root job rounds=$rounds"
[ "$rounds" -gt 0 ] && mark "linux root job ran"
rm -f /tmp/linux-cell-done

# The cell idle in its shell: its traps in 5 seconds (stats before and after); then shut
# down and destroyed.
linux_idle() {
    cellvisor cell linux "$LINUX_CONFIG" "$LINUX_DIR/Image" \
        --initrd "$LINUX_DIR/initramfs.cpio.gz" --cmdline "quiet cellvisor.actions=info" || return 1
    sleep 5
    cellvisor cell stats "$LINUX_CELL" || return 1
    sleep 5
    cellvisor cell stats "$LINUX_CELL" || return 1
    # A stock kernel has no communication region to vote in: stopped at once.
    cellvisor cell shutdown "$LINUX_CELL" || return 1
    cellvisor cell destroy "$LINUX_CELL"
}
step linux-idle linux_idle

before=$(memory_free)
failed=0
for cycle in 1 2 3 4 5; do
    if ! linux_boot "quiet" >/dev/null || [ "$state" != "shut down" ]; then
        failed=$((failed + 1))
        mark "linux cycle $cycle failed: state=$state"
    fi
    cellvisor cell destroy "$LINUX_CELL" >/dev/null || failed=$((failed + 1))
done
after=$(memory_free)
mark "linux cycles=5 failed=$failed memory_free before=$before after=$after"
[ "$before" = "$after" ] && mark "linux memory kept"
