#!/usr/bin/env bash
# Build netwarden's XDP program (the blocking fast path) from src/netwarden/bpf/xdp_block.bpf.c.
#
# usage: scripts/build-xdp.sh [-o OUTDIR]     (default OUTDIR: build/bpf under the repository;
#                                             a bare OUTDIR argument works too)
#
# Writes OUTDIR/xdp_block.bpf.o (and OUTDIR/vmlinux.h from this kernel's BTF when it is not
# there yet). Needs clang, bpftool, libbpf-dev (bpf/bpf_helpers.h) and /sys/kernel/btf/vmlinux.
# The program reads packets only (no CO-RE relocations): the object loads on any kernel
# with XDP, BPF links for XDP (5.9+), bpf_sk_lookup_udp and bpf_ktime_get_boot_ns (5.8+).
# Exit status 0 on success, 3 when a tool or the kernel BTF is missing, 1 when compiling fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$here/src/netwarden/bpf/xdp_block.bpf.c"
out="$here/build/bpf"
if [ "${1:-}" = "-o" ]; then
    [ $# -ge 2 ] || { echo "usage: $0 [-o OUTDIR]" >&2; exit 2; }
    out="$2"
elif [ $# -ge 1 ]; then
    out="$1"
fi
btf="${NETWARDEN_BTF:-/sys/kernel/btf/vmlinux}"
clang="${CLANG:-clang}"
bpftool="${BPFTOOL:-bpftool}"

missing() {
    echo "build-xdp: $1 is missing; $2" >&2
    exit 3
}
command -v "$clang" >/dev/null 2>&1 || missing "clang" "install the Debian package clang"
[ -r /usr/include/bpf/bpf_helpers.h ] || missing "bpf/bpf_helpers.h" "install the Debian package libbpf-dev"

mkdir -p "$out"
if [ ! -s "$out/vmlinux.h" ]; then
    bpftool_path="$(command -v "$bpftool" 2>/dev/null || true)"
    if [ -z "$bpftool_path" ] && [ -x /usr/sbin/bpftool ]; then bpftool_path=/usr/sbin/bpftool; fi
    [ -n "$bpftool_path" ] || missing "bpftool" "install the Debian package bpftool"
    [ -r "$btf" ] || missing "kernel BTF ($btf)" "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    tmp="$(mktemp "$out/.vmlinux.h.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    "$bpftool_path" btf dump file "$btf" format c >"$tmp"
    mv "$tmp" "$out/vmlinux.h"
fi

case "$(uname -m)" in
    x86_64) target_arch=x86 ;;
    aarch64) target_arch=arm64 ;;
    s390x) target_arch=s390 ;;
    ppc64le) target_arch=powerpc ;;
    riscv64) target_arch=riscv ;;
    *) target_arch="$(uname -m)" ;;
esac

# the same flags as scripts/build-bpf.sh, which compiles this file too
"$clang" -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_"$target_arch" \
    -Wall -Werror -Wno-unused-function \
    -I"$out" -c "$src" -o "$out/xdp_block.bpf.o.tmp"
mv "$out/xdp_block.bpf.o.tmp" "$out/xdp_block.bpf.o"
echo "built $out/xdp_block.bpf.o"
