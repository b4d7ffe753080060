# 20 cycles of create, load, start, destroy: the hypervisor's free memory must be the same
# before and after (no table frame or cell slot lost).
before=$(memory_free)
failed=0
cycle=1
while [ $cycle -le 20 ]; do
    if ! { cellvisor cell create "$CELL_CONFIG" >/dev/null &&
        cellvisor cell load "$CELL" "$IMAGE" --config "$CELL_CONFIG" >/dev/null &&
        cellvisor cell start "$CELL" >/dev/null &&
        cellvisor cell destroy "$CELL" >/dev/null; }; then
        failed=$((failed + 1))
        mark "cycle $cycle failed"
        cellvisor cell destroy "$CELL" >/dev/null 2>&1
    fi
    cycle=$((cycle + 1))
done
after=$(memory_free)
mark "cycles=20 failed=$failed memory_free before=$before after=$after"
if [ -n "$before" ] && [ "$before" = "$after" ]; then
    mark "cycles memory kept"
else
    mark "cycles memory leaked"
fi
