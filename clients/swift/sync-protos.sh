#!/usr/bin/env bash
# Copy the contract's protos into the Swift target, where the SwiftPM build
# plugins can see them (a plugin only reads files inside its target, and a
# symlink out of the package is not something to rely on in Xcode, in a
# package checkout or on Windows).
#
#   clients/swift/sync-protos.sh          # copy proto/plasm/v1/*.proto (and drop stale copies)
#   clients/swift/sync-protos.sh --check  # exit 1 if the copies differ from proto/
#
# CI runs the same comparison in tests/test_swift_sources.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src="$here/../../proto/plasm/v1"
dst="$here/Sources/PlasmClient/plasm/v1"

case "${1:-}" in
  --check)
    if diff -ru "$src" "$dst"; then
      echo "sync-protos: $dst matches proto/plasm/v1"
    else
      echo "sync-protos: the Swift target's protos differ from proto/plasm/v1; run clients/swift/sync-protos.sh" >&2
      exit 1
    fi
    ;;
  "")
    mkdir -p "$dst"
    rm -f "$dst"/*.proto
    cp "$src"/*.proto "$dst"/
    echo "sync-protos: copied $(ls "$src"/*.proto | wc -l) protos into $dst"
    ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac
