"""What every command shares: exit codes, errors, `--json`, untrusted text made
printable, and tables.

rich is imported only when something is drawn for a terminal (or a table
with columns is drawn): a `plasm submit` in a script does not pay for it.
Everything a node relays from peers (details, reasons, node ids) is
untrusted: it goes through `printable` and is shown as text, never markup.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_ADDR = "127.0.0.1:50151"
EXIT_USAGE = 2
EXIT_RPC = 1
EXIT_JOB_FAILED = 3
EXIT_UNVERIFIED = 4


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_RPC) -> None:
        super().__init__(message)
        self.code = code


def die(message: str, code: int = EXIT_RPC) -> NoReturn:
    raise CliError(message, code)


# -- terminals and consoles --------------------------------------------------------


def is_terminal(stream: Any) -> bool:
    """As rich decides it: FORCE_TERMINAL (non-empty) wins, else whether `stream` is a TTY."""
    force = os.environ.get("FORCE_TERMINAL")
    if force is not None:
        return force != ""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def stderr_is_terminal() -> bool:
    return is_terminal(sys.stderr)


@cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def out_console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def columns() -> int:
    """The width to fit plain text to: $COLUMNS, else 80 (as rich does off a terminal)."""
    try:
        return max(int(os.environ.get("COLUMNS", "")), 20)
    except ValueError:
        return 80


def say(text: str, *, to_stderr: bool = True) -> None:
    """One message, as text (never markup)."""
    stream = sys.stderr if to_stderr else sys.stdout
    if is_terminal(stream):
        console = err_console() if to_stderr else out_console()
        console.print(text, markup=False)
    else:
        stream.write(text + "\n")
        stream.flush()


def say_line(text: str, *, to_stderr: bool = True) -> None:
    """One line that the terminal may wrap but we do not (soft wrap)."""
    stream = sys.stderr if to_stderr else sys.stdout
    if is_terminal(stream):
        from rich.text import Text

        console = err_console() if to_stderr else out_console()
        console.print(Text(text), soft_wrap=True)
    else:
        stream.write(text + "\n")
        stream.flush()


def say_styled(*parts: tuple[str, str], to_stderr: bool = True) -> None:
    """Text in styled parts, e.g. ("receipt verified", "green"); plain off a terminal."""
    stream = sys.stderr if to_stderr else sys.stdout
    if is_terminal(stream):
        from rich.text import Text

        console = err_console() if to_stderr else out_console()
        console.print(Text.assemble(*parts))
    else:
        stream.write("".join(text for text, _ in parts) + "\n")
        stream.flush()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# -- untrusted text ------------------------------------------------------------------

_HEX64 = re.compile(r"\b([0-9a-f]{16})[0-9a-f]{48}\b")
NODE_ID_SHOWN = 12  # hex characters of a node id a table shows


def short(text: str) -> str:
    """Shorten 64-hex hashes and ids for tables; --json keeps them whole."""
    return _HEX64.sub(r"\1…", text)


def short_node_id(node_id: str) -> str:
    """A node id as a table shows it: its first 12 hex characters (enough to tell
    peers apart; `--json` and `plasm peer` give it whole)."""
    if re.fullmatch(r"[0-9a-f]{64}", node_id):
        return node_id[:NODE_ID_SHOWN] + "…"
    return printable(node_id, 64)


def printable(text: str, limit: int = 300) -> str:
    """`text` on one line with control and format characters escaped (`\\x1b`),
    cut to `limit` characters: a peer's words can't move the cursor, recolour
    or hide what the terminal shows."""
    cut = text[:limit]
    safe = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in cut)
    return safe + "…" if len(text) > limit else safe


def node_label(node_id: str) -> str:
    if not node_id:
        return "(unnamed node)"
    if re.fullmatch(r"[0-9a-f]{64}", node_id):
        return node_id[:16] + "…"
    return printable(node_id, 20)


# -- inputs --------------------------------------------------------------------------


def read_file(path: str, what: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        die(f"{what} {path} does not exist", EXIT_USAGE)
    except OSError as err:
        die(f"cannot read {what} {path}: {err.strerror}", EXIT_USAGE)


def parse_env(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            die(f"--env expects NAME=VALUE, got {pair!r}", EXIT_USAGE)
        out.append((name, value))
    return out


# -- tables --------------------------------------------------------------------------


def show_fields(
    title: str | None,
    rows: Sequence[tuple[str, str]],
    *,
    to_stderr: bool = False,
    boxed: bool = True,
) -> None:
    """A two-column table of `rows` (field, value): a rich table on a terminal,
    aligned plain text folded to the width otherwise. Values are text, never markup."""
    stream = sys.stderr if to_stderr else sys.stdout
    if is_terminal(stream):
        from rich.table import Table
        from rich.text import Text

        if boxed:
            table = Table(title=title, show_header=False, title_justify="left")
        else:
            table = Table(
                title=title, show_header=False, box=None, pad_edge=False, title_justify="left"
            )
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in rows:
            table.add_row(key, Text(value))
        (err_console() if to_stderr else out_console()).print(table)
        return
    import textwrap

    lines = [title] if title else []
    indent = "  " if title else ""
    key_width = max((len(key) for key, _ in rows), default=0) + 2
    width = max(columns() - len(indent) - key_width, 20)
    for key, value in rows:
        folded = textwrap.wrap(value, width, break_on_hyphens=False) or [""]
        lines.append(f"{indent}{key:<{key_width}}{folded[0]}".rstrip())
        lines.extend(f"{indent}{'':<{key_width}}{more}" for more in folded[1:])
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def show_grid(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    fold: Sequence[str] = (),
) -> None:
    """A table with a header row on stdout (rich, at the terminal's or $COLUMNS'
    width, 80 off a terminal). Only the columns named in `fold` (free text such
    as a runtime) fold when the width is short; the others (ids, addresses,
    numbers) are never cut or folded. Cells are text, never markup."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )
    for index, header in enumerate(headers):
        if header in fold:
            table.add_column(header, overflow="fold")
        else:
            widest = max((len(row[index]) for row in rows), default=0)
            table.add_column(header, no_wrap=True, min_width=max(widest, len(header)))
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    out_console().print(table)
