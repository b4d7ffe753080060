# A cell's whole life: create, load the timer demo, start, list, let it tick (its output goes
# to the cell's own UART), shut down, destroy; the CPUs must be back in Linux.
mark "cpus online=$(cat /sys/devices/system/cpu/online) before"
step create cellvisor cell create "$CELL_CONFIG"
step load cellvisor cell load "$CELL" "$IMAGE" --config "$CELL_CONFIG"
step start cellvisor cell start "$CELL"
step list cellvisor cell list
sleep 2
step stats cellvisor cell stats "$CELL"
step shutdown cellvisor cell shutdown "$CELL"
step destroy cellvisor cell destroy "$CELL"
mark "cpus online=$(cat /sys/devices/system/cpu/online) after"
