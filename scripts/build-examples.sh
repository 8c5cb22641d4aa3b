#!/usr/bin/env bash
# Build the Plasm example programs and WASM test fixtures.
#
#   examples/*.c      -> examples/build/NAME.wasm   (clang-14, wasm32-wasi, wasi-libc)
#   tests/wasm/*.wat  -> tests/wasm/build/NAME.wasm (wat2wasm)
#   tests/wasm/build/garbage.wasm: 256 fixed non-wasm bytes ("invalid module" case)
#
# Idempotent and reproducible (identical bytes on every run). Works from any cwd.
# Missing tools are installed by scripts/install-deps.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLANG="${CLANG:-clang-14}"
WAT2WASM="${WAT2WASM:-wat2wasm}"
WASI_SYSROOT=/usr   # Debian wasi-libc: /usr/include/wasm32-wasi, /usr/lib/wasm32-wasi

die() {
    echo "build-examples: error: $*" >&2
    echo "build-examples: run scripts/install-deps.sh to install the build dependencies." >&2
    exit 1
}

command -v "$CLANG" >/dev/null 2>&1 || die "'$CLANG' not found (Debian package: clang-14)"
command -v "$WAT2WASM" >/dev/null 2>&1 || die "'$WAT2WASM' not found (Debian package: wabt)"
command -v wasm-ld-14 >/dev/null 2>&1 || command -v wasm-ld >/dev/null 2>&1 \
    || die "wasm-ld not found (Debian package: lld-14)"
[[ -f "$WASI_SYSROOT/lib/wasm32-wasi/libc.a" ]] \
    || die "wasi-libc not found under $WASI_SYSROOT/lib/wasm32-wasi (Debian package: wasi-libc)"
[[ -f "$("$CLANG" --target=wasm32-wasi -print-libgcc-file-name)" ]] \
    || die "wasm32 compiler-rt builtins not found (Debian package: libclang-rt-14-dev-wasm32)"

# -nostdlibinc + -isystem keeps host glibc headers (/usr/include) off the include path;
# --strip-debug drops wasi-libc's DWARF (build paths, ~80 KB) but keeps the "name" section.
CFLAGS=(
    --target=wasm32-wasi --sysroot="$WASI_SYSROOT"
    -nostdlibinc -isystem "$WASI_SYSROOT/include/wasm32-wasi"
    -O2 -Wall -Wextra -Werror
    -ffile-prefix-map="$PWD"=.
    -fuse-ld=lld -Wl,--strip-debug
)

mkdir -p examples/build tests/wasm/build

for src in examples/*.c; do
    out="examples/build/$(basename "$src" .c).wasm"
    "$CLANG" "${CFLAGS[@]}" -o "$out" "$src"
    echo "built $out"
done

for src in tests/wasm/*.wat; do
    out="tests/wasm/build/$(basename "$src" .wat).wasm"
    "$WAT2WASM" "$src" -o "$out"
    echo "built $out"
done

# Deterministic garbage: byte i = (167*i + 13) mod 256 (starts 0x0d, not the "\0asm" magic).
out=tests/wasm/build/garbage.wasm
for ((i = 0; i < 256; i++)); do
    printf "\\$(printf '%03o' $(((167 * i + 13) & 255)))"
done >"$out"
echo "built $out"
