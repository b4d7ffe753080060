//! The root cell's kernel command line in the Multiboot command line.
//!
//! Loaders disagree on what the Multiboot command line holds: QEMU's `-kernel` puts the
//! image's path, a space and `-append`'s text; GRUB's `multiboot` the image's path and its
//! arguments as well, but other loaders only the arguments. The first word is taken for the
//! image's name only if it looks like one: a path (with a `/`) that is not a parameter (no
//! `=`).

/// The kernel command line in a Multiboot command line `line`.
pub fn kernel_command_line(line: &str) -> &str {
    let line = line.trim();
    let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
    if first.contains('/') && !first.contains('=') {
        rest.trim()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_path_goes_and_parameters_stay() {
        // QEMU's -kernel with -append.
        assert_eq!(
            kernel_command_line("target/images/qemu-x86/cellvisor.bin console=ttyS0 quiet"),
            "console=ttyS0 quiet"
        );
        // GRUB's multiboot.
        assert_eq!(
            kernel_command_line("/boot/cellvisor.bin  console=ttyS0"),
            "console=ttyS0"
        );
        assert_eq!(kernel_command_line("/boot/cellvisor.bin"), "");
        // Arguments alone, even when they start with a path-like parameter.
        assert_eq!(
            kernel_command_line("console=ttyS0 quiet"),
            "console=ttyS0 quiet"
        );
        assert_eq!(
            kernel_command_line("root=/dev/sda1 ro"),
            "root=/dev/sda1 ro"
        );
        assert_eq!(kernel_command_line("quiet"), "quiet");
        assert_eq!(kernel_command_line(""), "");
    }
}
