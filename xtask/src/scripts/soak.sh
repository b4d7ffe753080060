# Soak (`cargo xtask soak`, and a short one in the system tests): SOAK_CYCLES (default 12)
# cycles of create, load, start, stop, destroy of the cell $CELL_CONFIG, the inmates in turn:
#   timer-demo     agrees to shut down: `cell shutdown` succeeds, the cell is shut down;
#   stubborn-demo  refuses: `cell shutdown` fails (refused), the cell runs on until destroyed;
#   wild-demo      writes outside its memory: the hypervisor stops it (failed);
#   gic-wild-demo  enables an interrupt it does not own: stopped too (failed).
# Each cycle prints one line (the system tests call a console silent for 30 s hung), every
# SOAK_PROGRESS (default 50) cycles a progress line. At the end the hypervisor's free memory,
# the cell list and the root cell's online CPUs must be as at the start, and the cell must be
# created again with its interrupts: the hypervisor shows who owns an interrupt line nowhere,
# but a line kept by a dead cell makes the create fail ("not owned by the root cell").
CYCLES=${SOAK_CYCLES:-12}
PROGRESS=${SOAK_PROGRESS:-50}
KINDS="timer-demo stubborn-demo wild-demo gic-wild-demo"
scratch=/tmp/cellvisor-soak
mkdir -p $scratch
out=$scratch/out

# now: guest time since boot in centiseconds (/proc/uptime "123.45").
now() {
    sed -e 's/ .*//' -e 's/\.//' -e 's/^0*//' /proc/uptime
}

# wait_stopped: polls the cell's state every 0.2 s, up to 30 s, until it is failed; leaves the
# last state in $state. A line every 10 s keeps the console from looking hung.
wait_stopped() {
    tries=0
    state=$(cell_state)
    while [ "$state" != failed ] && [ $tries -lt 150 ]; do
        sleep 0.2 2>/dev/null || sleep 1
        tries=$((tries + 1))
        [ $((tries % 50)) = 0 ] && mark "soak cycle $cycle: still $state after $((tries / 5)) s"
        state=$(cell_state)
    done
}

# soak_cycle KIND: one cycle with the inmate KIND; returns 1 with the reason in $why if
# anything is not as it must be. The tool's output is in $out.
soak_cycle() {
    kind=$1
    why=
    : >$out
    cellvisor cell create "$CELL_CONFIG" >>$out 2>&1 || { why="create status=$?"; return 1; }
    cellvisor cell load "$CELL" "$INMATES/$kind.bin" --config "$CELL_CONFIG" >>$out 2>&1 ||
        { why="load status=$?"; return 1; }
    cellvisor cell start "$CELL" >>$out 2>&1 || { why="start status=$?"; return 1; }
    case $kind in
        timer-demo)
            cellvisor cell shutdown "$CELL" >>$out 2>&1 || { why="shutdown status=$?"; return 1; }
            state=$(cell_state)
            [ "$state" = "shut down" ] || { why="state after shutdown: $state"; return 1; }
            ;;
        stubborn-demo)
            if cellvisor cell shutdown "$CELL" --timeout-ms 20000 >>$out 2>&1; then
                why="shutdown was not refused"
                return 1
            fi
            grep -q "refused to shut down" $out || { why="shutdown failed otherwise"; return 1; }
            state=$(cell_state)
            [ "$state" = running ] || { why="state after the refusal: $state"; return 1; }
            ;;
        *)
            wait_stopped
            [ "$state" = failed ] || { why="not stopped by the hypervisor: state=$state"; return 1; }
            ;;
    esac
    cellvisor cell destroy "$CELL" >>$out 2>&1 || { why="destroy status=$?"; return 1; }
    state=$(cell_state)
    [ -z "$state" ] || { why="still listed after destroy: $state"; return 1; }
    online=$(cat /sys/devices/system/cpu/online)
    [ "$online" = "$cpus_before" ] || { why="CPUs online $online after destroy"; return 1; }
    return 0
}

cpus_before=$(cat /sys/devices/system/cpu/online)
cellvisor cell list --json >$scratch/cells-before
memory_before=$(memory_free)
mark "soak begin cycles=$CYCLES memory_free=$memory_before cpus online=$cpus_before"
failed=0
start=$(now)
cycle=1
while [ $cycle -le "$CYCLES" ]; do
    set -- $KINDS
    shift $(((cycle - 1) % 4))
    kind=$1
    began=$(now)
    if soak_cycle $kind; then
        mark "soak cycle $cycle $kind ok $(($(now) - began))0 ms"
    else
        failed=$((failed + 1))
        mark "soak cycle $cycle $kind failed: $why"
        while IFS= read -r line; do mark "soak cycle $cycle: $line"; done <$out
        # Back to a clean state for the next cycle.
        cellvisor cell destroy "$CELL" >/dev/null 2>&1
    fi
    if [ $((cycle % PROGRESS)) = 0 ] || [ $cycle = "$CYCLES" ]; then
        mark "soak progress cycle=$cycle/$CYCLES failed=$failed memory_free=$(memory_free) seconds=$((($(now) - start) / 100))"
    fi
    cycle=$((cycle + 1))
done
elapsed=$(($(now) - start))

# The interrupts: the cell comes back with its lines, then goes again.
cellvisor cell create "$CELL_CONFIG" >$out 2>&1
recreate=$?
cellvisor cell destroy "$CELL" >>$out 2>&1
redestroy=$?
while IFS= read -r line; do mark "soak recreate: $line"; done <$out
mark "soak recreate status=$recreate destroy status=$redestroy"

memory_after=$(memory_free)
cpus_after=$(cat /sys/devices/system/cpu/online)
cellvisor cell list --json >$scratch/cells-after
problems=
[ $failed = 0 ] || problems="$problems $failed-failed-cycles"
if [ -n "$memory_before" ] && [ "$memory_before" = "$memory_after" ]; then
    mark "soak memory kept"
else
    problems="$problems memory"
    mark "soak memory changed: before=$memory_before after=$memory_after"
fi
if [ "$cpus_before" = "$cpus_after" ]; then
    mark "soak cpus kept"
else
    problems="$problems cpus"
    mark "soak cpus changed: before=$cpus_before after=$cpus_after"
fi
if cmp -s $scratch/cells-before $scratch/cells-after; then
    mark "soak cells kept"
else
    problems="$problems cells"
    mark "soak cells changed:"
    diff $scratch/cells-before $scratch/cells-after
fi
if [ $recreate = 0 ] && [ $redestroy = 0 ]; then
    mark "soak interrupts kept"
else
    problems="$problems interrupts"
fi
mark "soak summary cycles=$CYCLES failed=$failed memory_free before=$memory_before after=$memory_after cpus before=$cpus_before after=$cpus_after seconds=$((elapsed / 100)) ms/cycle=$((elapsed * 10 / CYCLES))"
if [ -z "$problems" ]; then
    mark "soak passed"
else
    mark "soak failed:$problems"
    exit 1
fi
