"""Compiled-module cache keyed by the module's SHA-256.

Three tiers:

* memory: an LRU of compiled modules (with their InstancePre) and of modules
  that failed to compile, so a bad module is rejected cheaply next time;
* ``modules/<sha256>.wasm``: the raw bytes, so a client can submit by hash
  after the first upload, across restarts;
* ``compiled/<sha256>.cwasm``: wasmtime artifacts this node compiled itself.

A compiled artifact is native code, so it is loaded only if its HMAC (keyed by
a secret that never leaves the data directory, and bound to the engine
configuration) shows this node wrote it. A planted or corrupted file is
ignored and the module recompiled.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import wasmtime

from plasm_grpc.core.ids import check_hex64, sha256_hex
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.sandbox.engine import SandboxEngine
from plasm_grpc.sandbox.grow_watch import layout, watch_grows

WASM_MAGIC: Final = b"\x00asm"
_MAC_BYTES: Final = 32


class ModuleUnavailableError(LookupError):
    """No bytes were supplied and this node does not hold the module."""


@dataclass(frozen=True, slots=True)
class CompiledModule:
    sha256: str
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    compiled_bytes: int


@dataclass(frozen=True, slots=True)
class ModuleFailure:
    """A module that can never run here; the job ends with `outcome`."""

    sha256: str
    outcome: Outcome
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSettings:
    directory: Path | None
    max_module_bytes: int = 16 * 1024 * 1024
    max_compiled_bytes: int = 128 * 1024 * 1024
    max_cached_modules: int = 128


class ModuleCache:
    def __init__(self, engine: SandboxEngine, settings: CacheSettings, mac_key: bytes) -> None:
        self._engine = engine
        self.settings = settings
        self._mac_key = mac_key
        self._lru: OrderedDict[str, CompiledModule | ModuleFailure] = OrderedDict()
        self._lock = threading.Lock()
        self._compile_locks: dict[str, threading.Lock] = {}
        self._known_raw: set[str] = set()
        self.compiles = 0
        if settings.directory is not None:
            for sub in ("modules", "compiled"):
                (settings.directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- raw modules -------------------------------------------------------

    def _raw_path(self, sha256: str) -> Path | None:
        d = self.settings.directory
        return None if d is None else d / "modules" / f"{sha256}.wasm"

    def _artifact_path(self, sha256: str) -> Path | None:
        d = self.settings.directory
        return None if d is None else d / "compiled" / f"{sha256}.cwasm"

    def has_module(self, sha256: str) -> bool:
        check_hex64(sha256, "module_sha256")
        with self._lock:
            if sha256 in self._lru or sha256 in self._known_raw:
                return True
        path = self._raw_path(sha256)
        if path is not None and path.exists():
            with self._lock:
                self._known_raw.add(sha256)
            return True
        return False

    def holds_raw(self, sha256: str) -> bool:
        """The raw bytes of this module are on disk here (so `read_module` can
        give them to a worker), without reading or hashing them."""
        check_hex64(sha256, "module_sha256")
        with self._lock:
            if sha256 in self._known_raw:
                return True
        path = self._raw_path(sha256)
        return path is not None and path.exists()

    def put_module(self, sha256: str, data: bytes) -> None:
        """Keep the raw bytes (already hash-checked by the caller)."""
        with self._lock:
            if sha256 in self._known_raw:
                return
        path = self._raw_path(sha256)
        if path is not None and not path.exists():
            _atomic_write(path, data)
        with self._lock:
            self._known_raw.add(sha256)

    def read_module(self, sha256: str) -> bytes | None:
        """The raw bytes of a held module (to send to a worker), or None."""
        check_hex64(sha256, "module_sha256")
        return self._read_raw(sha256)

    def _read_raw(self, sha256: str) -> bytes | None:
        path = self._raw_path(sha256)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if sha256_hex(data) != sha256:
            return None  # corrupted on disk: treat as absent
        return data

    # -- compiled modules --------------------------------------------------

    def cached_count(self) -> int:
        with self._lock:
            return sum(1 for v in self._lru.values() if isinstance(v, CompiledModule))

    def get_or_compile(
        self, sha256: str, module_bytes: bytes | None
    ) -> CompiledModule | ModuleFailure:
        hit = self._lookup(sha256)
        if hit is not None:
            return hit
        with self._lock:
            lock = self._compile_locks.setdefault(sha256, threading.Lock())
        with lock:  # one compile per hash, however many jobs ask at once
            hit = self._lookup(sha256)
            if hit is not None:
                return hit
            result = self._load_artifact(sha256)
            if result is None:
                data = module_bytes if module_bytes is not None else self._read_raw(sha256)
                if data is None:
                    raise ModuleUnavailableError(f"module {sha256} is not held by this node")
                result = self._compile(sha256, data)
            with self._lock:
                self._lru[sha256] = result
                while len(self._lru) > self.settings.max_cached_modules:
                    self._lru.popitem(last=False)
                self._compile_locks.pop(sha256, None)
            return result

    def _lookup(self, sha256: str) -> CompiledModule | ModuleFailure | None:
        with self._lock:
            hit = self._lru.get(sha256)
            if hit is not None:
                self._lru.move_to_end(sha256)
            return hit

    def _compile(self, sha256: str, data: bytes) -> CompiledModule | ModuleFailure:
        if len(data) > self.settings.max_module_bytes:
            return ModuleFailure(
                sha256,
                Outcome.INVALID_MODULE,
                f"module is {len(data)} bytes; the limit is {self.settings.max_module_bytes}",
            )
        if not data.startswith(WASM_MAGIC):
            # wasmtime would try to parse anything else as WAT text.
            return ModuleFailure(
                sha256,
                Outcome.INVALID_MODULE,
                "not a WebAssembly binary (missing \\0asm magic)",
            )
        try:
            # Validated before it is read or rewritten here: what is wrong with
            # a module is wasmtime's to say, and the rewrite (grow_watch) must
            # never turn an invalid module into one that runs.
            wasmtime.Module.validate(self._engine.engine, data)
        except wasmtime.WasmtimeError as err:
            return ModuleFailure(sha256, Outcome.INVALID_MODULE, _first_line(err))
        declared = layout(data)
        largest = self._engine.settings.max_memory_bytes
        if declared is not None and len(declared.memories) > 1:
            # The store and the pooling allocator allow a job one memory.
            return ModuleFailure(
                sha256,
                Outcome.INVALID_MODULE,
                f"module has {len(declared.memories)} linear memories; a job may have one",
            )
        if declared is not None and declared.min_memory_bytes > largest:
            # No job here may have that much (and the pooling allocator would
            # refuse the module at compile time, as if it were invalid).
            return ModuleFailure(
                sha256,
                Outcome.MEMORY_LIMIT,
                f"the module needs {declared.min_memory_bytes} bytes of initial linear "
                f"memory; this node allows a job at most {largest} bytes",
            )
        self.compiles += 1
        try:
            # Compiled with its memory.grow watched, so the runner can tell a
            # grow refused at the job's memory limit (see grow_watch).
            module = wasmtime.Module(self._engine.engine, watch_grows(data))
        except wasmtime.WasmtimeError as err:
            return ModuleFailure(sha256, Outcome.INVALID_MODULE, _first_line(err))
        artifact = bytes(module.serialize())
        if len(artifact) > self.settings.max_compiled_bytes:
            return ModuleFailure(
                sha256,
                Outcome.COMPILE_LIMIT,
                f"compiled code is {len(artifact)} bytes; the limit is "
                f"{self.settings.max_compiled_bytes}",
            )
        result = self._prepare(sha256, module, len(artifact))
        if isinstance(result, CompiledModule):
            self._save_artifact(sha256, artifact)
        return result

    def _prepare(
        self, sha256: str, module: wasmtime.Module, compiled_bytes: int
    ) -> CompiledModule | ModuleFailure:
        start = [e for e in module.exports if e.name == "_start"]
        if not start or not isinstance(start[0].type, wasmtime.FuncType):
            return ModuleFailure(
                sha256,
                Outcome.INVALID_MODULE,
                "module exports no _start function (a WASI command is required)",
            )
        try:
            pre = self._engine.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as err:
            return ModuleFailure(sha256, Outcome.UNKNOWN_IMPORT, _first_line(err))
        return CompiledModule(sha256, module, pre, compiled_bytes)

    def _mac(self, sha256: str, artifact: bytes) -> bytes:
        mac = hmac.new(self._mac_key, digestmod=hashlib.sha256)
        mac.update(self._engine.fingerprint.encode())
        mac.update(b"\x00" + sha256.encode() + b"\x00")
        mac.update(artifact)
        return mac.digest()

    def _save_artifact(self, sha256: str, artifact: bytes) -> None:
        path = self._artifact_path(sha256)
        if path is not None:
            _atomic_write(path, self._mac(sha256, artifact) + artifact)

    def _load_artifact(self, sha256: str) -> CompiledModule | ModuleFailure | None:
        path = self._artifact_path(sha256)
        if path is None:
            return None
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        mac, artifact = blob[:_MAC_BYTES], blob[_MAC_BYTES:]
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, self._mac(sha256, artifact)):
            path.unlink(missing_ok=True)  # not ours (or damaged): never load it
            return None
        try:
            module = wasmtime.Module.deserialize(self._engine.engine, artifact)
        except wasmtime.WasmtimeError:
            path.unlink(missing_ok=True)
            return None
        return self._prepare(sha256, module, len(artifact))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
