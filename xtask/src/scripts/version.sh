# The tool runs in the root cell (static aarch64 binary on the stock kernel); nothing here
# needs the hypervisor's management interface.
step version cellvisor --version
