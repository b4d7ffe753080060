# Shared start of the root-cell scripts of `cargo xtask` (xtask/src/scripts/), which /init runs
# for its `script:NAME` action. Every path can be changed from the kernel command line
# (`CELL_CONFIG=/etc/cellvisor/other.toml` becomes an environment variable of /init).
CELL_CONFIG=${CELL_CONFIG:-/etc/cellvisor/demo.toml}
CELL=${CELL:-demo}
INMATES=${INMATES:-/lib/cellvisor/inmates}
IMAGE=${IMAGE:-$INMATES/timer-demo.bin}
WILD_IMAGE=${WILD_IMAGE:-$INMATES/wild-demo.bin}

# mark TEXT: a line the system tests look for.
mark() {
    echo "cellvisor-demo: $*"
}

# step NAME COMMAND...: runs the command (its output shows as it is), then marks
# `NAME status=<exit code>`; returns that status.
step() {
    step_name=$1
    shift
    "$@"
    step_status=$?
    mark "$step_name status=$step_status"
    return $step_status
}

# memory_free: the hypervisor's free memory in bytes (`cellvisor info --json`).
memory_free() {
    cellvisor info --json | sed -n 's/.*"memory_free": *\([0-9]*\).*/\1/p'
}

# cell_state: the state of $CELL in `cellvisor cell list --json` (empty if there is none).
cell_state() {
    cellvisor cell list --json | grep -A 3 "\"name\": \"$CELL\"" |
        sed -n 's/.*"state": "\(.*\)".*/\1/p'
}

# wait_for_failed LABEL: polls `cellvisor cell list` once a second, up to 30 s, until the cell
# is failed (the hypervisor stopped it; TCG on a loaded host may need a while), marking each
# try (the system tests give up after 30 s without output); leaves the last state in $state.
wait_for_failed() {
    tries=0
    state=
    while [ "$state" != failed ] && [ $tries -lt 30 ]; do
        sleep 1
        tries=$((tries + 1))
        state=$(cell_state)
        mark "$1 waited $tries s: state=$state"
    done
}

# cell_cycles COUNT [IMAGE]: COUNT cycles of create, load IMAGE (none: no load or start),
# start and destroy of $CELL, each failure marked and cleaned up; leaves the hypervisor's free
# memory before and after in $cycles_before and $cycles_after, the failures in $cycles_failed.
cell_cycles() {
    cycles_image=$2
    cycles_before=$(memory_free)
    cycles_failed=0
    cycle=1
    while [ $cycle -le "$1" ]; do
        if [ -n "$cycles_image" ]; then
            cellvisor cell create "$CELL_CONFIG" >/dev/null &&
                cellvisor cell load "$CELL" "$cycles_image" --config "$CELL_CONFIG" >/dev/null &&
                cellvisor cell start "$CELL" >/dev/null &&
                cellvisor cell destroy "$CELL" >/dev/null
        else
            cellvisor cell create "$CELL_CONFIG" >/dev/null &&
                cellvisor cell destroy "$CELL" >/dev/null
        fi
        if [ $? -ne 0 ]; then
            cycles_failed=$((cycles_failed + 1))
            mark "cycle $cycle failed"
            cellvisor cell destroy "$CELL" >/dev/null 2>&1
        fi
        cycle=$((cycle + 1))
    done
    cycles_after=$(memory_free)
}
