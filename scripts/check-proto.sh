#!/usr/bin/env bash
# The contract checks: buf lint, buf format, and buf breaking.
#
# buf breaking compares every commit that changed proto/ with its parent, and
# the working tree with HEAD, so no landing of main can break the contract
# without a failing check (the first commit has nothing to compare against).
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=(npx --no-install buf)

"${BUF[@]}" lint
"${BUF[@]}" format --exit-code --diff >/dev/null || { "${BUF[@]}" format --diff; echo "check-proto: run 'npx buf format -w'"; exit 1; }
echo "check-proto: buf lint and format clean"

if git rev-parse --git-dir >/dev/null 2>&1 && git rev-parse HEAD >/dev/null 2>&1; then
  checked=0
  for c in $(git log --format=%H -n 50 -- proto buf.yaml); do
    parent=$(git rev-parse -q --verify "$c^" || true)
    [[ -n $parent ]] || continue
    git cat-file -e "$parent:proto/plasm/v1" 2>/dev/null || continue
    "${BUF[@]}" breaking ".git#ref=$c" --against ".git#ref=$parent"
    checked=$((checked + 1))
  done
  if ! git diff --quiet HEAD -- proto buf.yaml; then
    "${BUF[@]}" breaking --against ".git#ref=HEAD"
    checked=$((checked + 1))
  fi
  echo "check-proto: buf breaking clean ($checked comparison(s))"
fi
