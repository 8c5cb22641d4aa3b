#!/usr/bin/env bash
# The Plasm demo: install what is needed, build the hello example from C, start
# a local node, run hello on it, and verify the signed receipt offline.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --runtime
scripts/build-examples.sh >/dev/null
. .venv/bin/activate

work=$(mktemp -d -t plasm-demo.XXXXXX)
log="$work/plasmd.log"
plasmd --data-dir "$work/node" --listen 127.0.0.1:0 --overlay-listen 127.0.0.1:0 2>"$log" &
pid=$!
cleanup() { kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; }
trap cleanup EXIT

addr=""
for _ in $(seq 1 200); do  # up to 20 s
  addr=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    try: e = json.loads(line)
    except ValueError: continue
    if e.get("event") == "ready": print(e["grpc"][0]); break' "$log")
  [[ -n $addr ]] && break
  kill -0 "$pid" 2>/dev/null || { echo "demo: plasmd exited:"; cat "$log"; exit 1; }
  sleep 0.1
done
[[ -n $addr ]] || { echo "demo: plasmd did not become ready:"; cat "$log"; exit 1; }

echo "== plasmd is serving on $addr (data in $work/node)"
plasm --addr "$addr" info
echo
echo "== plasm submit examples/build/hello.wasm --stdin 'Hello, World'"
plasm --addr "$addr" submit examples/build/hello.wasm --stdin 'Hello, World' \
  --receipt-out "$work/receipt.json"
echo
echo
echo "== plasm verify $work/receipt.json (offline: no daemon involved)"
plasm verify "$work/receipt.json" --module examples/build/hello.wasm \
  --stdin-text 'Hello, World' --input-arg hello.wasm
echo
echo "demo: done. The receipt is in $work/receipt.json"
