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

