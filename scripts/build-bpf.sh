#!/usr/bin/env bash
# Build netwarden's eBPF object (CO-RE) from src/netwarden/bpf/*.bpf.c.
#
# usage: scripts/build-bpf.sh [OUTDIR]        (default OUTDIR: build/bpf under the repository)
#
# Writes OUTDIR/vmlinux.h (from this kernel's BTF) and OUTDIR/netwarden.bpf.o.
# Needs clang, bpftool, libbpf-dev (bpf/bpf_helpers.h) and /sys/kernel/btf/vmlinux.
# Exit status 0 on success, 3 when a tool or the kernel BTF is missing, 1 when compiling fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$here/src/netwarden/bpf"
out="${1:-$here/build/bpf}"
btf="${NETWARDEN_BTF:-/sys/kernel/btf/vmlinux}"
clang="${CLANG:-clang}"
bpftool="${BPFTOOL:-bpftool}"

missing() {
    echo "build-bpf: $1 is missing; $2" >&2
    exit 3
}
command -v "$clang" >/dev/null 2>&1 || missing "clang" "install the Debian package clang"
bpftool_path="$(command -v "$bpftool" 2>/dev/null || true)"
if [ -z "$bpftool_path" ] && [ -x /usr/sbin/bpftool ]; then bpftool_path=/usr/sbin/bpftool; fi
[ -n "$bpftool_path" ] || missing "bpftool" "install the Debian package bpftool"
[ -r "$btf" ] || missing "kernel BTF ($btf)" "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
[ -r /usr/include/bpf/bpf_helpers.h ] || missing "bpf/bpf_helpers.h" "install the Debian package libbpf-dev"

mkdir -p "$out"
tmp="$(mktemp "$out/.vmlinux.h.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
"$bpftool_path" btf dump file "$btf" format c >"$tmp"
# Replace vmlinux.h only when it changed, so that make-style timestamps stay meaningful.
if ! cmp -s "$tmp" "$out/vmlinux.h" 2>/dev/null; then
    mv "$tmp" "$out/vmlinux.h"
fi

arch="$(uname -m)"
case "$arch" in
    x86_64) target_arch=x86 ;;
    aarch64) target_arch=arm64 ;;
    s390x) target_arch=s390 ;;
    ppc64le) target_arch=powerpc ;;
    riscv64) target_arch=riscv ;;
    *) target_arch="$arch" ;;
esac

for c in "$src"/*.bpf.c; do
    name="$(basename "$c" .c)"
    "$clang" -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_"$target_arch" \
        -Wall -Werror -Wno-unused-function \
        -I"$out" -I"$src" -c "$c" -o "$out/$name.o.tmp"
    mv "$out/$name.o.tmp" "$out/$name.o"
    echo "built $out/$name.o"
done
