# Cells on x86: the Jailhouse demo with the x86 `timer-demo` (64-bit, its local APIC timer in
# TSC-deadline or one-shot mode, latency reports on COM2; it approves the shutdown), cells
# that break their partition (`wild-demo`: memory, `ipi-wild-demo`: an interrupt to a root
# cell CPU, `ioapic-wild-demo`: a root cell IOAPIC pin; each stopped and reported), a cell
# given QEMU's PCI edu device (`pci-demo`), a cell of two CPUs that starts, interrupts and
# stops its second CPU itself (`smp-demo`), and 20 create/load/start/destroy cycles of
# `uart-demo` (COM2's interrupt through its IOAPIC pin) that must not lose memory.
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

# pci-demo: QEMU's edu device (00:05.0) given to a cell. While the cell has it, the root cell
# finds no function there; the cell drives it (BAR 0, MSI to its CPU) and is stopped when it
# moves its BAR; destroyed, the cell gives it back. Machines without it (Bochs) skip this.
EDU=/sys/bus/pci/devices/0000:00:05.0
# pci_id: vendor and device ID of 00:05.0 as the root cell reads them (ffffffff: absent).
pci_id() {
    hexdump -n 4 -e '1/4 "%08x"' $EDU/config
}
if [ -e $EDU/config ]; then
    PCI_CONFIG=${PCI_CONFIG:-/etc/cellvisor/pci-demo.toml}
    mark "pci root reads $(pci_id) before"
    step pci-create cellvisor cell create $PCI_CONFIG
    mark "pci root reads $(pci_id) while the cell has it"
    step pci-load cellvisor cell load pci-demo $INMATES/pci-demo.bin --config $PCI_CONFIG
    step pci-start cellvisor cell start pci-demo
    demo_cell=$CELL
    CELL=pci-demo
    wait_for_failed pci
    CELL=$demo_cell
    mark "pci state=$state"
    report=$(cellvisor console | grep "BAR 0 cannot move" | tail -n 1)
    mark "pci console report: $report"
    step pci-destroy cellvisor cell destroy pci-demo
    mark "pci root reads $(pci_id) after"
else
    mark "pci: no function 00:05.0, no PCI cell"
fi

# smp-demo: a cell of two CPUs. Its start runs the first; that one starts the second with
# INIT and start-up IPIs, sends it an NMI, stops it with INIT and starts it again (COM2), and
# approves the shutdown.
SMP_CONFIG=${SMP_CONFIG:-/etc/cellvisor/smp-demo.toml}
step smp-create cellvisor cell create $SMP_CONFIG
step smp-load cellvisor cell load smp-demo $INMATES/smp-demo.bin --config $SMP_CONFIG
step smp-start cellvisor cell start smp-demo
sleep 2
demo_cell=$CELL
CELL=smp-demo
state=$(cell_state)
CELL=$demo_cell
mark "smp state=$state"
step smp-shutdown cellvisor cell shutdown smp-demo
step smp-destroy cellvisor cell destroy smp-demo

# uart-demo: COM2's interrupt through the cell's IOAPIC pin, its timer, its shutdown.
step uart-create cellvisor cell create "$CELL_CONFIG"
step uart-load cellvisor cell load "$CELL" "$UART_IMAGE" --config "$CELL_CONFIG"
step uart-start cellvisor cell start "$CELL"
sleep 2
step uart-shutdown cellvisor cell shutdown "$CELL"
step uart-destroy cellvisor cell destroy "$CELL"

cell_cycles 20 "$UART_IMAGE"
mark "x86 cycles=20 failed=$cycles_failed memory_free before=$cycles_before after=$cycles_after"
