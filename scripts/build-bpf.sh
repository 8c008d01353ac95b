#!/usr/bin/env bash
# Build netwarden's eBPF object (CO-RE) from src/netwarden/bpf/*.bpf.c.
#
# usage: scripts/build-bpf.sh [-o OUTDIR] [NAME ...]
#
#   NAME      a source src/netwarden/bpf/NAME.bpf.c (default: every *.bpf.c there)
#   OUTDIR    default build/bpf under the repository
#
# Writes OUTDIR/vmlinux.h (from this kernel's BTF) and OUTDIR/NAME.bpf.o for each source.
# Needs clang, bpftool, libbpf-dev (bpf/bpf_helpers.h) and /sys/kernel/btf/vmlinux.
# Exit status 0 on success, 3 when a tool or the kernel BTF is missing, 1 when a source
# does not compile (the others are still built).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$here/src/netwarden/bpf"
out="$here/build/bpf"
if [ "${1:-}" = "-o" ]; then
    [ $# -ge 2 ] || { echo "usage: $0 [-o OUTDIR] [NAME ...]" >&2; exit 2; }
    out="$2"
    shift 2
fi
names=("$@")
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

sources=()
if [ ${#names[@]} -eq 0 ]; then
    sources=("$src"/*.bpf.c)
else
    for n in "${names[@]}"; do
        sources+=("$src/${n%.bpf.c}.bpf.c")
    done
fi
failed=()
for c in "${sources[@]}"; do
    name="$(basename "$c" .c)"
    if [ ! -f "$c" ]; then
        echo "build-bpf: no source $c" >&2
        failed+=("$name")
        continue
    fi
    if "$clang" -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_"$target_arch" \
        -Wall -Werror -Wno-unused-function \
        -I"$out" -I"$src" -c "$c" -o "$out/$name.o.tmp"; then
        mv "$out/$name.o.tmp" "$out/$name.o"
        echo "built $out/$name.o"
    else
        rm -f "$out/$name.o.tmp"
        failed+=("$name")
    fi
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "build-bpf: failed: ${failed[*]}" >&2
    exit 1
fi
