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

# wild_case NAME IMAGE REPORT: the inmate IMAGE breaks its partition; its cell must be
# stopped (state failed, waited for as NAME) and the console ring must hold a line with
# REPORT; then the cell is destroyed.
wild_case() {
    step "$1-create" cellvisor cell create "$CELL_CONFIG"
    step "$1-load" cellvisor cell load "$CELL" "$2" --config "$CELL_CONFIG"
    step "$1-start" cellvisor cell start "$CELL"
    wait_for_failed "$1"
    mark "$1 state=$state"
    report=$(cellvisor console | grep "$3" | tail -n 1)
    mark "$1 console report: $report"
    step "$1-destroy" cellvisor cell destroy "$CELL"
}

# Memory outside the cell.
wild_case wild "$WILD_IMAGE" "outside its memory"
# An interrupt to a root cell CPU: refused, the cell stopped.
wild_case ipi "$INMATES/ipi-wild-demo.bin" "belongs to another cell"
# A root cell IOAPIC pin: refused, the cell stopped.
wild_case ioapic "$INMATES/ioapic-wild-demo.bin" "IOAPIC access"

# uart-demo: COM2's interrupt through the cell's IOAPIC pin, its timer, its shutdown.
step uart-create cellvisor cell create "$CELL_CONFIG"
step uart-load cellvisor cell load "$CELL" "$UART_IMAGE" --config "$CELL_CONFIG"
step uart-start cellvisor cell start "$CELL"
sleep 2
step uart-shutdown cellvisor cell shutdown "$CELL"
step uart-destroy cellvisor cell destroy "$CELL"

cell_cycles 20 "$UART_IMAGE"
mark "x86 cycles=20 failed=$cycles_failed memory_free before=$cycles_before after=$cycles_after"
