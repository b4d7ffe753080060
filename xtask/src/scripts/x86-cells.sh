# Cells on x86: the Jailhouse demo with the x86 `timer-demo` (64-bit, its local APIC timer in
# TSC-deadline or one-shot mode, latency reports on COM2; it approves the shutdown), cells
# that break their partition (`wild-demo`: memory, `ipi-wild-demo`: an interrupt to a root
# cell CPU, `ioapic-wild-demo`: a root cell IOAPIC pin; each stopped and reported), and 20
# create/load/start/destroy cycles of `uart-demo` (COM2's interrupt through its IOAPIC pin)
# that must not lose memory.
UART_IMAGE=${UART_IMAGE:-$INMATES/uart-demo.bin}
mark "cpus online=$(cat /sys/devices/system/cpu/online) before"
step create cellvisor cell create "$CELL_CONFIG"
step load cellvisor cell load "$CELL" "$IMAGE" --config "$CELL_CONFIG"
step start cellvisor cell start "$CELL"
sleep 3
step list cellvisor cell list
state=$(cell_state)
mark "running state=$state"
step stats cellvisor cell stats "$CELL"
step shutdown cellvisor cell shutdown "$CELL"
step destroy cellvisor cell destroy "$CELL"
mark "cpus online=$(cat /sys/devices/system/cpu/online) after"

step wild-create cellvisor cell create "$CELL_CONFIG"
step wild-load cellvisor cell load "$CELL" "$WILD_IMAGE" --config "$CELL_CONFIG"
step wild-start cellvisor cell start "$CELL"
wait_for_failed wild
mark "wild state=$state"
report=$(cellvisor console | grep "outside its memory" | tail -n 1)
mark "wild console report: $report"
step wild-destroy cellvisor cell destroy "$CELL"

# An interrupt to a root cell CPU: refused, the cell stopped.
step ipi-create cellvisor cell create "$CELL_CONFIG"
step ipi-load cellvisor cell load "$CELL" "$INMATES/ipi-wild-demo.bin" --config "$CELL_CONFIG"
step ipi-start cellvisor cell start "$CELL"
wait_for_failed ipi
mark "ipi state=$state"
report=$(cellvisor console | grep "belongs to another cell" | tail -n 1)
mark "ipi console report: $report"
step ipi-destroy cellvisor cell destroy "$CELL"

# A root cell IOAPIC pin: refused, the cell stopped.
step ioapic-create cellvisor cell create "$CELL_CONFIG"
step ioapic-load cellvisor cell load "$CELL" "$INMATES/ioapic-wild-demo.bin" --config "$CELL_CONFIG"
step ioapic-start cellvisor cell start "$CELL"
wait_for_failed ioapic
mark "ioapic state=$state"
report=$(cellvisor console | grep "IOAPIC access" | tail -n 1)
mark "ioapic console report: $report"
step ioapic-destroy cellvisor cell destroy "$CELL"

# uart-demo: COM2's interrupt through the cell's IOAPIC pin, its timer, its shutdown.
step uart-create cellvisor cell create "$CELL_CONFIG"
step uart-load cellvisor cell load "$CELL" "$UART_IMAGE" --config "$CELL_CONFIG"
step uart-start cellvisor cell start "$CELL"
sleep 2
step uart-shutdown cellvisor cell shutdown "$CELL"
step uart-destroy cellvisor cell destroy "$CELL"

cell_cycles 20 "$UART_IMAGE"
mark "x86 cycles=20 failed=$cycles_failed memory_free before=$cycles_before after=$cycles_after"
