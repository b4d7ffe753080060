# `cargo xtask bench`: the root cell's side of the measurements. Each figure is printed between
# `cellvisor-demo: bench begin NAME` and `cellvisor-demo: bench end NAME` lines (JSON from the
# tool, or `guest-clock` lines), which xtask/src/bench.rs reads back from the console.
#   IDLE_SECONDS (default 120): how long the idle root cell sleeps between two counter reads.
#   BUSY_ROUNDS (default 2): rounds of the busybox workload each of the 4 jobs runs.
#   LINUX_BOOT_SECONDS (default 20), LINUX_IDLE_SECONDS (default 10): how long the Linux cell
#   may take to its /init, and how long it then idles between two counter reads.
IDLE_SECONDS=${IDLE_SECONDS:-120}
BUSY_ROUNDS=${BUSY_ROUNDS:-2}

# snapshot NAME COMMAND...: the command's output between the bench markers.
snapshot() {
    snapshot_name=$1
    shift
    mark "bench begin $snapshot_name"
    "$@"
    snapshot_status=$?
    mark "bench end $snapshot_name status=$snapshot_status"
}

# The root cell's counters and the time, twice around a quiet sleep.
snapshot info-root cellvisor info --json
snapshot idle-before-clock guest-clock
snapshot idle-before cellvisor cell stats 0 --json
sleep "$IDLE_SECONDS"
snapshot idle-after-clock guest-clock
snapshot idle-after cellvisor cell stats 0 --json

# A busybox workload on every CPU: file system walks, checksums, compression, process starts.
work() {
    round=0
    while [ $round -lt "$BUSY_ROUNDS" ]; do
        find / -xdev > /dev/null 2>&1
        dd if=/dev/zero bs=4096 count=512 2> /dev/null | busybox md5sum > /dev/null
        busybox tar cf - /bin /etc 2> /dev/null | busybox gzip -1 | wc -c > /dev/null
        i=0
        while [ $i -lt 20 ]; do
            ls -l /bin > /dev/null
            i=$((i + 1))
        done
        round=$((round + 1))
    done
}
snapshot busy-before-clock guest-clock
snapshot busy-before cellvisor cell stats 0 --json
work & work & work & work &
wait
snapshot busy-after-clock guest-clock
snapshot busy-after cellvisor cell stats 0 --json

# PSCI calls (CPU_OFF and CPU_ON) and management calls, for the cost per trap.
for round in 1 2 3 4 5; do
    echo 0 > /sys/devices/system/cpu/cpu2/online
    echo 1 > /sys/devices/system/cpu/cpu2/online
done
for round in 1 2 3 4 5 6 7 8 9 10; do
    cellvisor info > /dev/null
done

# The demo cell: the time from `cell create` to the inmate's first instruction (the inmate
# prints it on its own UART), its interrupt latency and trap costs, and the hypervisor's
# memory with two cells. BENCH_CELL=0 skips it.
if [ "${BENCH_CELL:-1}" = 1 ]; then
    snapshot create-clock guest-clock
    step create cellvisor cell create "$CELL_CONFIG"
    snapshot load-clock guest-clock
    step load cellvisor cell load "$CELL" "$IMAGE" --config "$CELL_CONFIG"
    snapshot start-clock guest-clock
    step start cellvisor cell start "$CELL"
    snapshot started-clock guest-clock
    # The root cell stays idle while the inmate takes its 1000 samples (1 ms apart): on QEMU a
    # busy root CPU delays the cell's CPU by up to its time slice.
    sleep "${CELL_SECONDS:-3}"
    snapshot info-cells cellvisor info --json
    snapshot cell-stats cellvisor cell stats "$CELL" --json
    step shutdown cellvisor cell shutdown "$CELL"
    step destroy cellvisor cell destroy "$CELL"
fi

# Linux in a cell (boards with linux.toml): the guest time from `cellvisor cell linux` to
# the cell's /init (which prints the guest clock on the cell's UART: the counter is the
# machine's, CNTVOFF_EL2 = 0), then the cell's traps while it idles in its shell.
# BENCH_LINUX=0 skips it.
LINUX_CONFIG=/etc/cellvisor/linux.toml
LINUX_DIR=/lib/cellvisor/linux
if [ "${BENCH_LINUX:-1}" = 1 ] && [ -f "$LINUX_CONFIG" ]; then
    snapshot linux-clock guest-clock
    step linux cellvisor cell linux "$LINUX_CONFIG" "$LINUX_DIR/Image" \
        --initrd "$LINUX_DIR/initramfs.cpio.gz" \
        --cmdline "console=ttyAMA0,115200 console=ttyPS0,115200 quiet cellvisor.actions=clock"
    sleep "${LINUX_BOOT_SECONDS:-20}"
    snapshot linux-idle-before-clock guest-clock
    snapshot linux-idle-before cellvisor cell stats guest --json
    sleep "${LINUX_IDLE_SECONDS:-10}"
    snapshot linux-idle-after-clock guest-clock
    snapshot linux-idle-after cellvisor cell stats guest --json
    step linux-shutdown cellvisor cell shutdown guest
    step linux-destroy cellvisor cell destroy guest
fi
snapshot root-stats cellvisor cell stats 0 --json
