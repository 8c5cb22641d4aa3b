#!/usr/bin/env python3
"""Check the packaged /etc/plasm/plasmd.toml against the plasmd just built.

    debian/check-conffile.py CONFFILE PLASMD [ARG...]

PLASMD [ARG...] is the command that runs plasmd (the build runs the package's
virtual environment's python with `-m plasm_grpc.daemon.main`).

The conffile shows every setting: the ones the package chooses as active lines,
every other one commented out as `#key = value` (no space after the `#`; prose
comments are `# text`) with plasmd's default. Uncommenting every `#key = value`
line must give exactly what `plasmd --config CONFFILE --print-config` prints:
so no key is missing, none is unknown, and no default shown is stale. Run by
debian/rules at build time and by tests/test_debian_package.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from typing import Any

SETTING = re.compile(r"^#([a-z_][a-z0-9_]*) = (.*)$")


def uncommented(text: str) -> str:
    return "\n".join(
        f"{m.group(1)} = {m.group(2)}" if (m := SETTING.match(line)) else line
        for line in text.splitlines()
    )


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def main(conffile: str, plasmd: list[str]) -> int:
    with open(conffile, encoding="utf-8") as f:
        text = f.read()
    effective = subprocess.run(
        [*plasmd, "--config", conffile, "--print-config"],
        capture_output=True,
        text=True,
        check=False,
    )
    if effective.returncode != 0:
        print(f"{conffile}: plasmd refuses it:\n{effective.stderr}", file=sys.stderr)
        return 1
    try:
        shown = flatten(tomllib.loads(uncommented(text)))
    except tomllib.TOMLDecodeError as err:
        print(f"{conffile} with every #key = value uncommented is not TOML: {err}", file=sys.stderr)
        return 1
    actual = flatten(tomllib.loads(effective.stdout))
    problems = [f"missing: {k} = {actual[k]!r}" for k in sorted(actual.keys() - shown.keys())]
    problems += [f"unknown to plasmd: {k}" for k in sorted(shown.keys() - actual.keys())]
    problems += [
        f"stale: {k} shows {shown[k]!r}, plasmd's value is {actual[k]!r}"
        for k in sorted(actual.keys() & shown.keys())
        if shown[k] != actual[k]
    ]
    if problems:
        print(
            f"{conffile} does not match plasmd --print-config; update it:\n  "
            + "\n  ".join(problems),
            file=sys.stderr,
        )
        return 1
    print(f"{conffile}: all {len(actual)} settings shown, defaults current")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
