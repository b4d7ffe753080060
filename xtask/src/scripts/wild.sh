# A cell that breaks its partition: the hypervisor stops it and reports it (`cell "demo" ...
# outside its configuration` on its console), the root cell goes on, and the cell can be
# destroyed and created again.
step create cellvisor cell create "$CELL_CONFIG"
step load cellvisor cell load "$CELL" "$WILD_IMAGE" --config "$CELL_CONFIG"
step start cellvisor cell start "$CELL"
wait_for_failed memory
step list cellvisor cell list
mark "state=$state"
report=$(cellvisor console | grep "outside its configuration" | tail -n 1)
mark "console report: $report"
# The root cell still runs: a process, a file, the clock.
mark "root responsive uptime=$(sed 's/ .*//' /proc/uptime)"
step destroy cellvisor cell destroy "$CELL"
step recreate cellvisor cell create "$CELL_CONFIG"
step destroy-again cellvisor cell destroy "$CELL"

# Breaking the partition through the interrupt controller: enabling an interrupt the cell does
# not own stops it too.
step gic-create cellvisor cell create "$CELL_CONFIG"
step gic-load cellvisor cell load "$CELL" "$INMATES/gic-wild-demo.bin" --config "$CELL_CONFIG"
step gic-start cellvisor cell start "$CELL"
wait_for_failed gic
mark "gic state=$state"
report=$(cellvisor console | grep "ForeignIrq" | tail -n 1)
mark "gic console report: $report"
step gic-destroy cellvisor cell destroy "$CELL"
