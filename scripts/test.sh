#!/usr/bin/env bash
# Install what the tests need, then run every check and every test.
# This is the README's test command, and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/build-examples.sh >/dev/null
. .venv/bin/activate

step() { printf '\n== %s\n' "$*"; }
step "generated code and schemas match proto/ (scripts/generate.py --check)"
python scripts/generate.py --check
step "test vectors match the code (scripts/make-vectors.py --check)"
python scripts/make-vectors.py --check
step "the web console's verifier bundle matches clients/typescript (scripts/build-console.sh --check)"
scripts/build-console.sh --check
step "TypeScript client: src/gen matches proto/ (generate --check), tsc --noEmit"
npm --prefix clients/typescript run --silent generate:check
npm --prefix clients/typescript run --silent typecheck
step "architecture diagram matches its source (scripts/make-diagram.sh --check)"
scripts/make-diagram.sh --check
step "contract: buf lint, format, breaking"
scripts/check-proto.sh
step "ruff"
ruff check src tests scripts benchmarks
ruff format --check src tests scripts benchmarks
step "mypy --strict"
mypy
mypy --strict scripts/generate.py scripts/jsonschema_from_proto.py scripts/make-vectors.py
step "import-linter layers"
lint-imports
step "pytest"
pytest -q "$@"
