#!/usr/bin/env bash
# Render docs/architecture-diagram.dot to docs/architecture-diagram.png (graphviz).
#   scripts/make-diagram.sh           # render, and record the .dot's hash beside the png
#   scripts/make-diagram.sh --check   # fail if the .dot changed since the png was rendered
# The check compares the .dot's SHA-256 with the one recorded in
# docs/architecture-diagram.png.sha256, not PNG bytes, which differ between
# graphviz builds; it also renders to a temporary file so a .dot that dot
# cannot read fails here.
set -euo pipefail
cd "$(dirname "$0")/.."

dot_file=docs/architecture-diagram.dot
png_file=docs/architecture-diagram.png
hash_file=$png_file.sha256

command -v dot >/dev/null || { echo "make-diagram: graphviz (dot) is not installed (scripts/install-deps.sh)" >&2; exit 1; }

dot_hash() { sha256sum "$dot_file" | cut -d' ' -f1; }

case "${1:-}" in
  --check)
    tmp=$(mktemp --suffix=.png)
    trap 'rm -f "$tmp"' EXIT
    dot -Tpng -Gdpi=96 "$dot_file" -o "$tmp"
    [[ -f $png_file ]] || { echo "make-diagram: $png_file is missing; run scripts/make-diagram.sh" >&2; exit 1; }
    if [[ ! -f $hash_file || $(cat "$hash_file") != "$(dot_hash)" ]]; then
      echo "make-diagram: $dot_file changed since $png_file was rendered; run scripts/make-diagram.sh" >&2
      exit 1
    fi
    ;;
  "")
    dot -Tpng -Gdpi=96 "$dot_file" -o "$png_file"
    dot_hash >"$hash_file"
    echo "make-diagram: wrote $png_file"
    ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac
