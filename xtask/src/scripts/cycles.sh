# 20 cycles of create, load, start, destroy: the hypervisor's free memory must be the same
# before and after (no table frame or cell slot lost).
cell_cycles 20 "$IMAGE"
mark "cycles=20 failed=$cycles_failed memory_free before=$cycles_before after=$cycles_after"
if [ -n "$cycles_before" ] && [ "$cycles_before" = "$cycles_after" ]; then
    mark "cycles memory kept"
else
    mark "cycles memory leaked"
fi
