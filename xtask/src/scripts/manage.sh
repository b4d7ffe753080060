# The management interface without an inmate: the hypervisor's facts, the root cell's trap
# counters, a cell created, listed and destroyed while its I/O ports are refused to the root
# cell, then 20 create/destroy cycles; the hypervisor's free memory must be the same before
# and after.
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
cell_cycles 20
mark "manage cycles=20 failed=$cycles_failed memory_free before=$before after=$cycles_after"
if [ -n "$before" ] && [ "$before" = "$cycles_after" ]; then
    mark "manage memory kept"
else
    mark "manage memory leaked"
fi
