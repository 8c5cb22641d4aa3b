#!/usr/bin/env bash
# Build the plasmd Debian package (debian/) and check it with lintian.
#
#   scripts/build-deb.sh [--out DIR]   # default DIR: $TMPDIR/plasm-deb
#
# Installs the build dependencies with apt when missing, builds from a copy of
# the source in a temporary directory (dpkg-buildpackage writes next to the
# source, so nothing lands in the repository), with Debian's /usr/bin/python3
# and the pins of requirements/constraints.txt. Prints lintian's findings, and
# the path of the .deb as the last line of its output.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

out=${TMPDIR:-/tmp}/plasm-deb
case "${1:-}" in
  --out) out=${2:?--out needs a directory} ;;
  "") ;;
  -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
esac

# Build dependencies (debian/control's Build-Depends) and lintian.
want=(build-essential fakeroot dpkg-dev debhelper dh-virtualenv help2man python3 python3-venv lintian)
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "build-deb: apt packages: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/plasm-deb-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/plasmd
mkdir -p "$src"
# The tracked and untracked-but-not-ignored files (no .venv, node_modules, build
# output); without git, the tree less those.
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$repo" ls-files -z --cached --others --exclude-standard |
    (cd "$repo" && while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done) |
    tar -C "$repo" --null -T - -cf - | tar -C "$src" -xf -
else
  tar -C "$repo" --exclude=./.venv --exclude=./node_modules --exclude='*.egg-info' \
    --exclude=./build -cf - . | tar -C "$src" -xf -
fi

# Debian's python3 and Debian's tools only: no pyenv, no active virtualenv.
echo "build-deb: dpkg-buildpackage in $src (log: $out/build.log)"
mkdir -p "$out"
if ! (cd "$src" && env -u VIRTUAL_ENV -u PYTHONPATH -u PYTHONHOME \
      PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b) >"$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed; the whole log is $out/build.log" >&2
  exit 1
fi

changes=$(ls "$work"/plasmd_*.changes)
deb=$(ls "$work"/plasmd_*.deb)
rm -f "$out"/plasmd_*.deb
cp "$deb" "$out/"
deb=$out/$(basename "$deb")

echo "build-deb: lintian"
# Overridden tags (O:) are listed with the reason debian/plasmd.lintian-overrides
# gives; any other finding is printed, and an error (E:) fails the build.
# (--show-overrides makes lintian exit 2 for an overridden error: judge the lines.)
rc=0
PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --show-overrides "$changes" >"$out/lintian.txt" 2>"$out/lintian.err" || rc=$?
if ((rc != 0 && rc != 2)); then
  cat "$out/lintian.err" >&2
  echo "build-deb: lintian failed (exit $rc)" >&2
  exit 1
fi
echo "build-deb: overridden lintian tags (count, tag):"
grep '^O:' "$out/lintian.txt" | awk '{print $3}' | sort | uniq -c | sed 's/^/  /'
if grep -v '^[NO]:' "$out/lintian.txt" | grep -q .; then
  echo "build-deb: lintian findings:"
  grep -v '^[NO]:' "$out/lintian.txt"
else
  echo "build-deb: no lintian findings beyond the overrides"
fi
if grep -q '^E:' "$out/lintian.txt"; then
  echo "build-deb: lintian reports errors" >&2
  exit 1
fi
echo "$deb"
