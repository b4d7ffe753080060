# The root cell as an adversary of the hypervisor: several `cellvisor` processes at once,
# management commands with every field out of range (`cellvisor raw`, which writes the
# registers unchecked), and last a 32-bit process reading memory outside the root cell, on
# every CPU. Each must end in a clear error (or SIGBUS) and change nothing: same cells, same
# free memory, all CPUs online, the root cell responsive.
#   OUTSIDE (default 0x0b000000, a hole of QEMU's virt machine between the virtio transports
#   and the platform bus): an address outside every memory region of the root cell;
#   INSIDE (default 0x7f000000, the root cell's loadable memory that the cells borrow: not
#   Linux's RAM and claimed by no driver, so /dev/mem maps it): one inside.
OUTSIDE=${OUTSIDE:-0x0b000000}
INSIDE=${INSIDE:-0x7f000000}
scratch=/tmp/cellvisor-hostile
mkdir -p $scratch

# state_file NAME: the cells, the free memory and the online CPUs, for comparison.
state_file() {
    {
        cellvisor cell list --json
        memory_free
        cat /sys/devices/system/cpu/online
    } >$scratch/$1
}

# same_state LABEL: marks whether the state is as at the start.
same_state() {
    state_file now
    if cmp -s $scratch/start $scratch/now; then
        mark "$1 state unchanged"
    else
        mark "$1 state changed"
        diff $scratch/start $scratch/now
    fi
}

# count TEXT FILES...: how many of the files contain TEXT.
count() {
    text=$1
    shift
    grep -l -F "$text" "$@" | wc -l
}

state_file start

# ---- Several tools at once (each takes /dev/mem's lock for its whole command sequence).
# The same configuration four times: exactly one create wins.
for i in 1 2 3 4; do
    cellvisor cell create "$CELL_CONFIG" >$scratch/same-$i 2>&1 &
done
cellvisor cell list >$scratch/list-1 2>&1 &
cellvisor cell list --json >$scratch/list-2 2>&1 &
wait
cat $scratch/same-*
mark "concurrent-same created=$(count 'created (id' $scratch/same-*) exists=$(count 'a cell with this name exists' $scratch/same-*) lists=$(count ID $scratch/list-1)$(count '"name"' $scratch/list-2)"
# Destroy three times at once: exactly one wins, the others find no cell.
for i in 1 2 3; do
    cellvisor cell destroy "$CELL" >$scratch/destroy-$i 2>&1 &
done
wait
cat $scratch/destroy-*
mark "concurrent-destroy destroyed=$(count 'destroyed (CPUs' $scratch/destroy-*) gone=$(count 'no such cell' $scratch/destroy-*)"
same_state concurrent-same

# Different configurations that want the same resources: the demo cell, a twin on the same
# CPU, and a cell on another CPU with the same memory. Exactly one is created.
sed -e 's/^name = .*/name = "twin"/' "$CELL_CONFIG" >$scratch/twin.toml
sed -e 's/^name = .*/name = "neighbour"/' -e 's/^cpus = .*/cpus = [2]/' "$CELL_CONFIG" \
    >$scratch/neighbour.toml
cellvisor cell create "$CELL_CONFIG" >$scratch/diff-1 2>&1 &
cellvisor cell create $scratch/twin.toml >$scratch/diff-2 2>&1 &
cellvisor cell create $scratch/neighbour.toml >$scratch/diff-3 2>&1 &
wait
cat $scratch/diff-*
mark "concurrent-different created=$(count 'created (id' $scratch/diff-*) refused=$(count 'cellvisor: cell ' $scratch/diff-*) cpus online=$(cat /sys/devices/system/cpu/online)"
for name in "$CELL" twin neighbour; do
    cellvisor cell destroy $name >/dev/null 2>&1
done
same_state concurrent-different

# ---- Management commands with fields out of range. `raw NAME COMMAND ARGS...` marks
# `NAME status=<exit status>`; the tool prints the hypervisor's error.
raw() {
    raw_name=$1
    shift
    cellvisor raw "$@"
    mark "$raw_name status=$?"
}
MAX=0xffffffffffffffff
# The command register: numbers no command has.
raw command-zero 0
raw command-next 10
raw command-max 0xffffffff
# Info, List: no fields; junk in the argument registers changes nothing.
raw info-junk 1 $MAX $MAX $MAX $MAX
raw list-junk 7 $MAX $MAX $MAX $MAX
# Create: the length (ARG0) empty, beyond the window, huge; junk in the window.
raw create-empty 2 0
raw create-4g 2 0x100000000
raw create-max 2 $MAX
dd if=/dev/urandom of=$scratch/junk.bin bs=256 count=1 2>/dev/null
raw create-junk 2 256 --data $scratch/junk.bin
# Cell ids (ARG0) no cell has, for every command that takes one.
raw load-no-cell 3 $MAX 0 8
raw start-no-cell 4 $MAX
raw shutdown-no-cell 5 $MAX
raw destroy-no-cell 6 $MAX
raw destroy-id-wraps 6 0x100000001
raw stats-no-cell 8 $MAX
# Load into a created cell: address (ARG1), length (ARG2) and window offset (ARG3) out of
# range, one at a time; the cell stays created.
step hostile-create cellvisor cell create "$CELL_CONFIG"
id=$(cellvisor cell list --json | grep -B 1 "\"name\": \"$CELL\"" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p')
mark "cell $CELL id=$id"
raw load-address-max 3 "$id" 0xfffffffffffffff8 8
raw load-address-outside 3 "$id" 0x40000000 8
raw load-length-max 3 "$id" 0 $MAX
raw load-length-4g 3 "$id" 0 0x100000000
raw load-offset-max 3 "$id" 0 8 $MAX
raw load-offset-4g 3 "$id" 0 8 0x100000000
raw load-root 3 0 0x40000000 8
state=$(cell_state)
mark "after-loads state=$state"
# Shutdown (ARG1 is the timeout in ms) of a cell that never answers (`wfi` in a loop): a
# timeout too large to count in timer ticks must be refused, not wrap to a short one. 2^59 ms
# times any counter frequency that is a multiple of 32 Hz (62.5 MHz, 100 MHz, 1 GHz) is a
# multiple of 2^64: computed in 64 bits, the timeout becomes 0.
printf '\177\040\003\325\377\377\377\027' >$scratch/silent.bin
step silent-load cellvisor cell load "$CELL" $scratch/silent.bin
step silent-start cellvisor cell start "$CELL"
raw shutdown-timeout-huge 5 "$id" 0x0800000000000000
raw shutdown-timeout-huge-again 5 "$id" 0x0800000000000000
state=$(cell_state)
mark "after-huge-timeout state=$state"
step hostile-destroy cellvisor cell destroy "$CELL"
# The console position (ARG0) beyond what the hypervisor ever wrote.
raw console-beyond 9 $MAX
same_state raw-commands

# ---- A 32-bit process reads outside the root cell through /dev/mem: SIGBUS (exit status
# 135), on every CPU, and the CPU goes on. First the program works inside, and a 64-bit read
# outside for comparison.
devmem32 "$INSIDE"
mark "devmem32-inside status=$?"
devmem "$OUTSIDE" 32
mark "devmem64-outside status=$?"
for cpu in $(seq 0 $(($(nproc) - 1))); do
    taskset "$(printf '%x' $((1 << cpu)))" devmem32 "$OUTSIDE"
    mark "devmem32-outside cpu=$cpu status=$?"
    # The hypervisor's note about the next read goes to the same UART: let this line drain
    # first, so that the two do not interleave.
    sleep 0.5
done
mark "cpus online=$(cat /sys/devices/system/cpu/online) after devmem32"
mark "root responsive uptime=$(sed 's/ .*//' /proc/uptime)"
same_state devmem32

# ---- A flood of notes: 60 reads outside the root cell in a row. The hypervisor notes each
# abort it injects within the root cell's budget (16 at once, then one per 2 s, and at most
# 2 KiB of each 64 KiB of the console ring): the ring gets at most a few more than 16 of them
# (fewer once the cell's share is spent: the rest go to the UART only), and on the UART the
# next note that passes says how many were suppressed (the system test looks for that line).
notes() {
    cellvisor console | grep -c "outside its configuration: external abort injected"
}
notes_before=$(notes)
flood=0
while [ $flood -lt 60 ]; do
    devmem "$OUTSIDE" 32 >/dev/null 2>&1
    flood=$((flood + 1))
done
sleep 2.5
devmem "$OUTSIDE" 32 >/dev/null 2>&1
sleep 0.5
noted=$(($(notes) - notes_before))
suppressed=$(cellvisor console | grep -c "more notes were suppressed")
mark "note-flood reads=61 noted=$noted suppressed-lines=$suppressed"
if [ $noted -le 20 ]; then
    mark "note-flood bounded"
else
    mark "note-flood not bounded"
fi
mark "root responsive after the flood uptime=$(sed 's/ .*//' /proc/uptime)"
