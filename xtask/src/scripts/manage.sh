# The management interface without an inmate (x86, whose cells do not run yet): the
# hypervisor's facts, the root cell's trap counters, a cell created, listed and destroyed, then 20 create/destroy cycles;
# the hypervisor's free memory must be the same before and after.
step info cellvisor info
step stats cellvisor cell stats 0
before=$(memory_free)
step create cellvisor cell create "$CELL_CONFIG"
step list cellvisor cell list
state=$(cell_state)
mark "state=$state"
# COM2's ports are the cell's now: the root cell's read is refused and reported.
dd if=/dev/port bs=1 skip=$((0x2f8)) count=1 2>/dev/null | hexdump -v -e '1/1 "%02x"' >/dev/null
mark "port read done"
step destroy cellvisor cell destroy "$CELL"
failed=0
cycle=1
while [ $cycle -le 20 ]; do
    if ! { cellvisor cell create "$CELL_CONFIG" >/dev/null &&
        cellvisor cell destroy "$CELL" >/dev/null; }; then
        failed=$((failed + 1))
        mark "cycle $cycle failed"
        cellvisor cell destroy "$CELL" >/dev/null 2>&1
    fi
    cycle=$((cycle + 1))
done
after=$(memory_free)
mark "manage cycles=20 failed=$failed memory_free before=$before after=$after"
if [ -n "$before" ] && [ "$before" = "$after" ]; then
    mark "manage memory kept"
else
    mark "manage memory leaked"
fi
