# Wrong input: each case must end in one clear `cellvisor: ...` error line and exit status 1.
scratch=/tmp/cellvisor-bad-input
mkdir -p $scratch
# The hypervisor's state before: cells and free memory (compared at the end).
cellvisor cell list --json >$scratch/before
cellvisor info --json | grep '"memory_free"' >>$scratch/before

printf 'name = "broken"\ncpus = [\n' >$scratch/malformed.toml
cellvisor cell create $scratch/malformed.toml
mark "malformed status=$?"

cellvisor cell start no-such-cell
mark "unknown-cell status=$?"

step create cellvisor cell create "$CELL_CONFIG"

# A CPU no machine here has, and the demo cell's CPU under another name.
sed -e 's/^name = .*/name = "foreign"/' -e 's/^cpus = .*/cpus = [63]/' "$CELL_CONFIG" \
    >$scratch/foreign.toml
cellvisor cell create $scratch/foreign.toml
mark "cpu-not-owned status=$?"
sed -e 's/^name = .*/name = "twin"/' "$CELL_CONFIG" >$scratch/twin.toml
cellvisor cell create $scratch/twin.toml
mark "cpu-taken status=$?"

cellvisor cell start "$CELL"
mark "start-before-load status=$?"

# Larger than any loadable region of the demo cells: found by the tool with --config, and by
# the hypervisor without.
dd if=/dev/zero of=$scratch/big.bin bs=1048576 count=17 2>/dev/null
cellvisor cell load "$CELL" $scratch/big.bin --config "$CELL_CONFIG"
mark "image-too-large status=$?"
cellvisor cell load "$CELL" $scratch/big.bin
mark "image-too-large-hypervisor status=$?"
rm -f $scratch/big.bin

step destroy cellvisor cell destroy "$CELL"
cellvisor cell destroy "$CELL"
mark "destroy-twice status=$?"
cellvisor cell destroy 0
mark "destroy-root status=$?"
cellvisor cell list --json >$scratch/after
cellvisor info --json | grep '"memory_free"' >>$scratch/after
if cmp -s $scratch/before $scratch/after; then
    mark "state unchanged"
else
    mark "state changed"
    diff $scratch/before $scratch/after
fi

# The shutdown vote: stubborn-demo refuses the first request and approves the second.
step vote-create cellvisor cell create "$CELL_CONFIG"
step vote-load cellvisor cell load "$CELL" "$INMATES/stubborn-demo.bin" --config "$CELL_CONFIG"
step vote-start cellvisor cell start "$CELL"
sleep 2
cellvisor cell shutdown "$CELL" --timeout-ms 20000
mark "vote-refused status=$?"
step vote-approved cellvisor cell shutdown "$CELL" --timeout-ms 20000
step vote-destroy cellvisor cell destroy "$CELL"
