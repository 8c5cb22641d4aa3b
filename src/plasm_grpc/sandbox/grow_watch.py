"""Make a refused `memory.grow` visible to the host.

wasmtime's store limiter refuses a `memory.grow` past the job's memory limit by
returning -1 to the guest, and tells the host nothing: the C API (so
wasmtime-py) has no ResourceLimiter callback (wasmtime issue 11434). So that a
guest that traps after such a refusal can be reported as MEMORY_LIMIT, and
only then, the module is rewritten once before it is compiled: every
`memory.grow` on a 32-bit memory also records, when it returns -1, the size in
pages it asked for, if the module's own declared maximum would have allowed
that size. The largest such size is kept in an exported global
(`REFUSED_PAGES_EXPORT`), which the sandbox compares with the job's limit
after a trap (`refused_pages`). A grow refused only by the module's own
maximum is not recorded.

The rewrite appends four globals and one export and replaces each
`memory.grow` with a short sequence; no existing index moves. It is meant for
modules wasmtime has already validated (sandbox/cache.py validates first): in
an invalid module a reference to a global that does not exist could name one
of the new ones. Anything this reader does not understand (an unknown opcode,
an unknown, repeated or misplaced section, a malformed one) leaves the module
as it was: wasmtime then reports what is wrong with it, and a refused grow in
such a module is not recognised.

`layout` also reads every memory's declared sizes, so a module whose initial
memory is above what a job may have is reported as MEMORY_LIMIT before
wasmtime refuses it for other reasons (the pooling allocator rejects it at
compile time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import wasmtime

REFUSED_PAGES_EXPORT: Final = "plasm:refused-grow-pages"
_PAGE_SIZE: Final = 65536
_MAX_PAGES_32: Final = 65536  # a 32-bit memory can never exceed 4 GiB

_SECTION_IMPORT: Final = 2
_SECTION_MEMORY: Final = 5
_SECTION_GLOBAL: Final = 6
_SECTION_EXPORT: Final = 7
_SECTION_CODE: Final = 10
# Where each known section may appear (custom sections, id 0, anywhere).
_SECTION_ORDER: Final = (1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11)

_OP_MEMORY_SIZE: Final = 0x3F
_OP_MEMORY_GROW: Final = 0x40


class _UnsupportedError(Exception):
    """The module is malformed or uses an encoding this reader does not know."""


@dataclass(frozen=True, slots=True)
class Memory:
    """One linear memory as the module declares it."""

    min_pages: int
    max_pages: int | None
    is64: bool
    page_size: int

    @property
    def min_bytes(self) -> int:
        return self.min_pages * self.page_size


@dataclass(frozen=True, slots=True)
class Layout:
    memories: tuple[Memory, ...]  # imported ones first, as indexed

    @property
    def min_memory_bytes(self) -> int:
        """The largest initial memory the module asks for (0 if none)."""
        return max((m.min_bytes for m in self.memories), default=0)


class _Reader:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise _UnsupportedError("truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u(self) -> int:
        """An unsigned LEB128."""
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise _UnsupportedError("LEB128 too long")

    def skip_leb(self) -> None:
        """A signed or unsigned LEB128 whose value does not matter."""
        for _ in range(10):
            if self.byte() < 0x80:
                return
        raise _UnsupportedError("LEB128 too long")

    def skip(self, n: int) -> None:
        if self.pos + n > self.end:
            raise _UnsupportedError("truncated")
        self.pos += n

    def name(self) -> bytes:
        n = self.u()
        start = self.pos
        self.skip(n)
        return self.data[start : self.pos]

    def valtype(self) -> None:
        if self.byte() in (0x63, 0x64):  # (ref null? heaptype)
            self.skip_leb()

    def blocktype(self) -> None:
        # 0x40, a value type, or a type index as s33: one LEB covers them, but
        # reference types carry a heap type after their first byte.
        if self.data[self.pos : self.pos + 1] in (b"\x63", b"\x64"):
            self.pos += 1
        self.skip_leb()

    def memarg(self) -> None:
        align = self.u()
        if align & 0x40:  # multi-memory: a memory index follows
            self.skip_leb()
        self.skip_leb()  # offset

    def memory(self) -> Memory:
        flags = self.byte()
        if flags & ~0x0F:
            raise _UnsupportedError(f"memory limits flags {flags:#x}")
        minimum = self.u()
        maximum = self.u() if flags & 0x01 else None
        page_size = 1 << self.u() if flags & 0x08 else _PAGE_SIZE
        return Memory(minimum, maximum, bool(flags & 0x04), page_size)


def _sections(data: bytes) -> list[tuple[int, bytes]]:
    if data[:8] != b"\x00asm\x01\x00\x00\x00":
        raise _UnsupportedError("not a version 1 WebAssembly module")
    r = _Reader(data, 8)
    sections: list[tuple[int, bytes]] = []
    rank = -1
    while r.pos < r.end:
        section_id = r.byte()
        size = r.u()
        start = r.pos
        r.skip(size)
        if section_id != 0:
            # Each known section once, in order: anything else is for wasmtime to refuse.
            if section_id not in _SECTION_ORDER:
                raise _UnsupportedError(f"section id {section_id}")
            if _SECTION_ORDER.index(section_id) <= rank:
                raise _UnsupportedError(f"section {section_id} repeated or out of order")
            rank = _SECTION_ORDER.index(section_id)
        sections.append((section_id, data[start : r.pos]))
    return sections


def _imports(payload: bytes) -> tuple[list[Memory], int]:
    """Imported memories and the number of imported globals."""
    r = _Reader(payload)
    memories: list[Memory] = []
    globals_ = 0
    for _ in range(r.u()):
        r.name()
        r.name()
        kind = r.byte()
        if kind in {0x00, 0x04}:  # function (type index); tag (0x00, type index)
            if kind == 0x04:
                r.byte()
            r.u()
        elif kind == 0x01:  # table: reference type and limits
            r.valtype()
            flags = r.byte()
            r.u()
            if flags & 0x01:
                r.u()
        elif kind == 0x02:
            memories.append(r.memory())
        elif kind == 0x03:
            r.valtype()
            r.byte()
            globals_ += 1
        else:
            raise _UnsupportedError(f"import kind {kind:#x}")
    return memories, globals_


def _vec_count(payload: bytes) -> tuple[int, bytes]:
    r = _Reader(payload)
    count = r.u()
    return count, payload[r.pos :]


def _read(data: bytes) -> tuple[list[tuple[int, bytes]], list[Memory], int]:
    sections = _sections(data)
    memories: list[Memory] = []
    imported_globals = 0
    for section_id, payload in sections:
        if section_id == _SECTION_IMPORT:
            memories, imported_globals = _imports(payload)
    for section_id, payload in sections:
        if section_id == _SECTION_MEMORY:
            r = _Reader(payload)
            memories += [r.memory() for _ in range(r.u())]
    return sections, memories, imported_globals


def layout(data: bytes) -> Layout | None:
    """The module's declared memories, or None if it cannot be read."""
    try:
        return Layout(tuple(_read(data)[1]))
    except _UnsupportedError:
        return None


def refused_pages(exported: object, store: wasmtime.Store) -> int:
    """The largest size, in pages, of a refused grow that counts (0: none).

    `exported` is the instance's `REFUSED_PAGES_EXPORT` (None if absent).
    """
    if not isinstance(exported, wasmtime.Global):
        return 0
    value = exported.value(store)
    return value if isinstance(value, int) else 0


# --- the rewrite -----------------------------------------------------------


def _leb_u(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _leb_s(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if (value == 0 and not b & 0x40) or (value == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


@dataclass(frozen=True, slots=True)
class _Globals:
    delta: bytes  # i32: the grow's operand
    result: bytes  # i32: what memory.grow returned
    wanted: bytes  # i64: pages the refused grow asked for
    refused: bytes  # i64, exported: the largest counted refusal


def _grow_sequence(memidx: bytes, cap_pages: int, g: _Globals) -> bytes:
    """`memory.grow` that also records a refusal the module's maximum allows."""
    get, put = b"\x23", b"\x24"
    return b"".join(
        (
            put + g.delta,
            get + g.delta,
            bytes([_OP_MEMORY_GROW]) + memidx,
            put + g.result,
            b"\x02\x40",  # block (nothing in, nothing out)
            get + g.result,
            b"\x41\x7f\x47\x0d\x00",  # i32.const -1; i32.ne; br_if 0: it grew
            bytes([_OP_MEMORY_SIZE]) + memidx,
            b"\xad",  # i64.extend_i32_u
            get + g.delta,
            b"\xad\x7c",  # i64.extend_i32_u; i64.add: the size it asked for
            put + g.wanted,
            get + g.wanted,
            b"\x42" + _leb_s(cap_pages),
            b"\x56\x0d\x00",  # i64.gt_u; br_if 0: past the module's own maximum
            get + g.wanted,
            get + g.refused,
            b"\x58\x0d\x00",  # i64.le_u; br_if 0: not larger than one already kept
            get + g.wanted,
            put + g.refused,
            b"\x0b",  # end
            get + g.result,
        )
    )


def _skip_fb(r: _Reader) -> None:
    sub = r.u()
    if sub in (0, 1, 6, 7, 11, 12, 13, 14, 16):
        r.skip_leb()
    elif sub in (2, 3, 4, 5, 8, 9, 10, 17, 18, 19):
        r.skip_leb()
        r.skip_leb()
    elif sub in (20, 21, 22, 23):
        r.skip_leb()  # heap type
    elif sub in (24, 25):
        r.byte()
        r.skip_leb()
        r.skip_leb()
        r.skip_leb()
    elif not (sub == 15 or 26 <= sub <= 30):  # array.len, conversions, i31
        raise _UnsupportedError(f"opcode 0xfb {sub}")


def _skip_fc(r: _Reader) -> None:
    sub = r.u()
    if sub in (8, 10, 12, 14):
        r.skip_leb()
        r.skip_leb()
    elif sub in (9, 11, 13, 15, 16, 17):
        r.skip_leb()
    elif not (0 <= sub <= 7 or 19 <= sub <= 22):
        raise _UnsupportedError(f"opcode 0xfc {sub}")


def _skip_fd(r: _Reader) -> None:
    sub = r.u()
    if sub <= 0x0B or sub in (0x5C, 0x5D):
        r.memarg()
    elif sub in (0x0C, 0x0D):
        r.skip(16)
    elif 0x15 <= sub <= 0x22:
        r.byte()
    elif 0x54 <= sub <= 0x5B:
        r.memarg()
        r.byte()
    elif sub > 0x113:
        raise _UnsupportedError(f"opcode 0xfd {sub}")


def _skip_fe(r: _Reader) -> None:
    sub = r.u()
    if sub == 0x03:
        r.byte()
    elif sub <= 0x02 or 0x10 <= sub <= 0x4E:
        r.memarg()
    else:
        raise _UnsupportedError(f"opcode 0xfe {sub}")


# Opcodes followed by one LEB128 immediate: br, br_if, call, return_call,
# call_ref, return_call_ref, throw, rethrow, delegate, catch, local.*, global.*,
# table.get/set, memory.size, i32/i64.const, ref.func, br_on_null/non_null.
_ONE_LEB: Final = frozenset(
    (
        *(0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x08, 0x09, 0x18, 0x07),
        *range(0x20, 0x27),
        *(0x3F, 0x41, 0x42, 0xD2, 0xD5, 0xD6),
    )
)
_NO_IMMEDIATE: Final = frozenset(
    (0x00, 0x01, 0x05, 0x0A, 0x0B, 0x0F, 0x19, 0x1A, 0x1B, 0xD1, 0xD3, 0xD4, *range(0x45, 0xC5))
)


def _rewrite_body(
    data: bytes, start: int, end: int, memories: list[Memory], g: _Globals
) -> bytes | None:
    """The function body with its grows replaced (None: it has none)."""
    r = _Reader(data, start, end)
    for _ in range(r.u()):  # local declarations
        r.u()
        r.valtype()
    out = bytearray()
    copied = start
    while r.pos < end:
        at = r.pos
        op = r.byte()
        if op in _NO_IMMEDIATE:
            continue
        if op in _ONE_LEB:
            r.skip_leb()
        elif op == _OP_MEMORY_GROW:
            index = r.u()
            if index >= len(memories):
                raise _UnsupportedError("memory.grow on a memory that does not exist")
            memory = memories[index]
            if memory.is64 or memory.page_size != _PAGE_SIZE:
                continue  # not watched: 64-bit memories take an i64 operand
            cap = _MAX_PAGES_32 if memory.max_pages is None else memory.max_pages
            out += data[copied:at]
            out += _grow_sequence(_leb_u(index), cap, g)
            copied = r.pos
        elif 0x28 <= op <= 0x3E:
            r.memarg()
        elif op in (0x02, 0x03, 0x04, 0x06):  # block, loop, if, try
            r.blocktype()
        elif op in (0x11, 0x13):  # call_indirect, return_call_indirect
            r.skip_leb()
            r.skip_leb()
        elif op == 0x0E:  # br_table
            for _ in range(r.u() + 1):
                r.skip_leb()
        elif op == 0x1C:  # select with types
            for _ in range(r.u()):
                r.valtype()
        elif op == 0x1F:  # try_table
            r.blocktype()
            for _ in range(r.u()):
                kind = r.byte()
                if kind in (0x00, 0x01):
                    r.skip_leb()
                r.skip_leb()
        elif op == 0x43:
            r.skip(4)
        elif op == 0x44:
            r.skip(8)
        elif op == 0xD0:  # ref.null heaptype
            r.skip_leb()
        elif op == 0xFB:
            _skip_fb(r)
        elif op == 0xFC:
            _skip_fc(r)
        elif op == 0xFD:
            _skip_fd(r)
        elif op == 0xFE:
            _skip_fe(r)
        else:
            raise _UnsupportedError(f"opcode {op:#x}")
    if r.pos != end:
        raise _UnsupportedError("instruction past the end of a function body")
    if copied == start:
        return None
    return bytes(out + data[copied:end])


def _rewrite_code(payload: bytes, memories: list[Memory], g: _Globals) -> bytes | None:
    r = _Reader(payload)
    count = r.u()
    bodies: list[bytes] = []
    changed = False
    for _ in range(count):
        size = r.u()
        start = r.pos
        r.skip(size)
        new = _rewrite_body(payload, start, r.pos, memories, g)
        changed = changed or new is not None
        bodies.append(payload[start : r.pos] if new is None else new)
    if r.pos != r.end:
        raise _UnsupportedError("trailing bytes in the code section")
    if not changed:
        return None
    return _leb_u(count) + b"".join(_leb_u(len(b)) + b for b in bodies)


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + _leb_u(len(payload)) + payload


def watch_grows(data: bytes) -> bytes:
    """The module rewritten so refused grows are recorded (or `data` unchanged).

    Unchanged when the module has no `memory.grow` on a 32-bit memory, already
    has an export of that name, or cannot be read here.
    """
    try:
        return _watch_grows(data)
    except _UnsupportedError:
        return data


def _watch_grows(data: bytes) -> bytes:
    sections, memories, imported_globals = _read(data)
    ids = [section_id for section_id, _ in sections]
    defined_globals = 0
    if _SECTION_GLOBAL in ids:
        defined_globals, _ = _vec_count(sections[ids.index(_SECTION_GLOBAL)][1])
    if _SECTION_EXPORT in ids:
        r = _Reader(sections[ids.index(_SECTION_EXPORT)][1])
        for _ in range(r.u()):
            if r.name() == REFUSED_PAGES_EXPORT.encode():
                return data
            r.byte()
            r.u()
    first = imported_globals + defined_globals
    g = _Globals(*(_leb_u(first + i) for i in range(4)))
    if _SECTION_CODE not in ids:
        return data
    code = _rewrite_code(sections[ids.index(_SECTION_CODE)][1], memories, g)
    if code is None:
        return data
    sections[ids.index(_SECTION_CODE)] = (_SECTION_CODE, code)
    i32_global, i64_global = b"\x7f\x01\x41\x00\x0b", b"\x7e\x01\x42\x00\x0b"
    _append_entries(sections, _SECTION_GLOBAL, (i32_global, i32_global, i64_global, i64_global))
    name = REFUSED_PAGES_EXPORT.encode()
    _append_entries(sections, _SECTION_EXPORT, (_leb_u(len(name)) + name + b"\x03" + g.refused,))
    return data[:8] + b"".join(_section(section_id, p) for section_id, p in sections)


def _append_entries(
    sections: list[tuple[int, bytes]], section_id: int, new: tuple[bytes, ...]
) -> None:
    """Add entries at the end of a vector section, creating it in its place."""
    ids = [s for s, _ in sections]
    if section_id in ids:
        at = ids.index(section_id)
        count, rest = _vec_count(sections[at][1])
        sections[at] = (section_id, _leb_u(count + len(new)) + rest + b"".join(new))
        return
    rank = _SECTION_ORDER.index(section_id)
    at = len(sections)
    for i, s in enumerate(ids):
        if s != 0 and _SECTION_ORDER.index(s) > rank:
            at = i
            break
    sections.insert(at, (section_id, _leb_u(len(new)) + b"".join(new)))
