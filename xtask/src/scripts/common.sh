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
