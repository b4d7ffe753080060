# The main demo of `cargo xtask run --demo`: the root cell creates a cell on CPU 3, loads the
# timer demo and starts it, then hands the shell over. The cell prints on the second UART.
step create cellvisor cell create "$CELL_CONFIG"
step load cellvisor cell load "$CELL" "$IMAGE" --config "$CELL_CONFIG"
step start cellvisor cell start "$CELL"
step list cellvisor cell list
mark "the demo cell runs (its UART is the second serial port); cellvisor cell stats, shutdown and destroy manage it"
