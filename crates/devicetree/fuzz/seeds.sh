#!/bin/sh
# Seeds for the `derive` target: stock device trees behind the target's 64-byte prefix.
#
# - QEMU's `virt` trees (GICv2 and GICv3), from `qemu-system-aarch64 -machine dumpdtb`;
# - the ZCU102 tree of Debian's arm64 kernel package, if `cargo xtask` has downloaded it
#   (target/linux/arm64/dtbs; pass another tree directory as $1).
#
# QEMU's blob has a `totalsize` of 1 MiB for a few KiB of content: the free space is cut so
# that libFuzzer mutates the tree, not zeros. Prefix byte 0 is odd: the structure-aware
# mode is on, and the other prefix bytes pick RAM at 0x40000000 and every CPU.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dtbs=${1:-$here/../../../target/linux/arm64/dtbs}
out=$here/corpus/derive
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

# Mode 1; one RAM range at BASES[0]; no devices, no emulated windows; CPUs 0xff.
prefix() {
    printf '\001\001\001\000\000\000\001\001\000\000\000\377\000\002'
    head -c 50 /dev/zero
}

# A blob cut to the end of its strings block, with `totalsize` to match.
pack() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
blob = open(sys.argv[1], "rb").read()
strings_at, = struct.unpack(">I", blob[12:16])
strings_len, = struct.unpack(">I", blob[32:36])
end = strings_at + strings_len
packed = bytearray(blob[:end])
packed[4:8] = struct.pack(">I", end)
open(sys.argv[2], "wb").write(bytes(packed))
PY
}

seed() {
    pack "$1" "$tmp/packed"
    { prefix; cat "$tmp/packed"; } > "$out/$2"
    echo "seed $2: $(wc -c < "$out/$2") bytes"
}

if command -v qemu-system-aarch64 > /dev/null; then
    for gic in 2 3; do
        qemu-system-aarch64 -M "virt,gic-version=$gic,virtualization=on" -cpu cortex-a57 \
            -smp 4 -m 1G -display none -machine dumpdtb="$tmp/virt.dtb" > /dev/null 2>&1
        seed "$tmp/virt.dtb" "qemu-virt-gicv$gic"
    done
else
    echo "qemu-system-aarch64 not found: no QEMU seeds" >&2
fi
for name in zynqmp-zcu102-rev1.0 zynqmp-zcu102-rev1.1; do
    if [ -f "$dtbs/xilinx/$name.dtb" ]; then
        seed "$dtbs/xilinx/$name.dtb" "$name"
    fi
done
