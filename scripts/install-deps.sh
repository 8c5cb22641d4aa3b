#!/usr/bin/env bash
# Install everything Plasm needs on a fresh Debian 12 machine, from pinned lists.
#
#   scripts/install-deps.sh            # runtime + tests: apt, pip (.venv), npm
#   scripts/install-deps.sh --runtime  # just enough to run the demo
#
# Python packages go into .venv at the repo root, pinned by
# requirements/constraints.txt; npm packages by package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
case "${1:-}" in
  --runtime) mode=runtime ;;
  "") ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--runtime]" >&2; exit 2 ;;
esac

# clang/wasi-libc build the example modules from C; wabt assembles test modules.
apt_runtime=(clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32 wabt python3-venv)
# Debian's protoc 3.21 is the only generator whose PHP output runs on Debian's
# php-google-protobuf; php-cli runs the generated-code smoke test.
# phpunit runs the PHP client's tests against a live daemon (clients/php).
# libprotobuf-dev: the well-known protos (timestamp.proto) for Debian's protoc.
apt_test=(protobuf-compiler libprotobuf-dev php-cli php-google-protobuf php-curl phpunit jq git nftables)
# graphviz renders docs/architecture-diagram.png (scripts/make-diagram.sh --check).
apt_test+=(graphviz)
# The Debian package (scripts/build-deb.sh) and its test under real systemd
# (tests/test_debian_package.py): build dependencies, lintian, systemd-nspawn.
apt_test+=(build-essential fakeroot dpkg-dev debhelper dh-virtualenv help2man lintian systemd-container)
# Debian's Chromium runs the web console's browser tests (tests/test_console_browser.py),
# driven by playwright-core from package.json, which never downloads a browser.
apt_test+=(chromium)
# Node.js + npm run buf; any install works (Debian's, or one already on the machine).
command -v npm >/dev/null 2>&1 || apt_test+=(nodejs npm)

want=("${apt_runtime[@]}")
[[ $mode == full ]] && want+=("${apt_test[@]}")
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "install-deps: apt packages: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PLASM_PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install-deps: Python 3.11 or newer is required (found $("$PY" --version 2>&1)); set PLASM_PYTHON" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "install-deps: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt "$@"; }
if [[ $mode == full ]]; then
  pip_install -e . -r requirements/dev.txt
  echo "install-deps: npm packages (buf, playwright-core)"
  # package.json pins buf exactly; `npm ci` trips over buf's per-platform optional
  # packages missing from the lock file, so install from package.json + lock.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error >/dev/null
  echo "install-deps: npm packages of clients/typescript (npm ci from its package-lock.json)"
  # Exactly the locked versions (protoc-gen-es, Connect-ES, @noble/*, tsc,
  # esbuild); npm ci takes them from the local cache when they are there.
  npm ci --prefix clients/typescript --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null
else
  pip_install -e .
fi
echo "install-deps: done ($mode)"
