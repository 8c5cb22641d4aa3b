"""The wasmtime sandbox used directly: outcomes, WASI wiring, limits and the module cache.

Modules come from ``scripts/build-examples.sh`` (the ``wasm`` fixture in
conftest.py builds them once per session); a few tiny ones are written inline
as WAT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from conftest import WasmModules

from plasm_grpc.api import codec
from plasm_grpc.core.limits import DEFAULT_LIMITS, MIB
from plasm_grpc.core.outcome import Outcome
from plasm_grpc.core.receipt import Receipt
from plasm_grpc.sandbox.cache import (
    CacheSettings,
    CompiledModule,
    ModuleCache,
    ModuleUnavailableError,
)
from plasm_grpc.sandbox.engine import EngineSettings, SandboxEngine
from plasm_grpc.sandbox.runner import Execution, JobSpec, Sandbox

MAC_KEY = hashlib.sha256(b"plasm sandbox test mac key").digest()
OTHER_MAC_KEY = hashlib.sha256(b"another node's mac key").digest()
MAC_BYTES = 32


class Modules:
    """Module bytes by name (``hello``, ``exit_3`` ...), from the session `wasm` fixture."""

    def __init__(self, wasm: WasmModules) -> None:
        self._wasm = wasm

    def __getitem__(self, name: str) -> bytes:
        return self._wasm.bytes(name)


@pytest.fixture(scope="module")
def modules(wasm: WasmModules) -> Modules:
    return Modules(wasm)


@pytest.fixture(scope="module")
def engine() -> Iterator[SandboxEngine]:
    e = SandboxEngine()
    try:
        yield e
    finally:
        e.close()


def make_cache(
    engine: SandboxEngine, directory: Path | None, mac_key: bytes = MAC_KEY, **settings: int
) -> ModuleCache:
    return ModuleCache(engine, CacheSettings(directory=directory, **settings), mac_key)


@pytest.fixture
def sandbox(engine: SandboxEngine, tmp_path: Path) -> Sandbox:
    return Sandbox(engine, make_cache(engine, tmp_path / "cache"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(
    sandbox: Sandbox,
    module: bytes | None,
    *,
    module_sha256: str | None = None,
    stdin: bytes = b"",
    args: tuple[str, ...] = (),
    env: tuple[tuple[str, str], ...] = (),
    **limits: int,
) -> Execution:
    assert module is not None or module_sha256 is not None
    spec = JobSpec(
        module_sha256=module_sha256 or sha(module or b""),
        args=args,
        env=env,
        stdin=stdin,
        limits=dataclasses.replace(DEFAULT_LIMITS, **limits),
    )
    return sandbox.run(spec, module)


def proc_exit_module(code: int) -> bytes:
    wat = f"""
    (module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (call $exit (i32.const {code}))))
    """
    return bytes(wasmtime.wat2wasm(wat))


# -- outcomes ------------------------------------------------------------------------------

OUTCOME_CASES = [
    # name, limits, outcome, exit_code, trap_code
    ("exit_0", {}, Outcome.SUCCESS, 0, ""),
    ("exit_3", {}, Outcome.NONZERO_EXIT, 3, ""),
    ("exit_255", {}, Outcome.NONZERO_EXIT, 255, ""),
    ("stderr_write", {}, Outcome.SUCCESS, 0, ""),
    ("trap_unreachable", {}, Outcome.TRAP, 0, "unreachable"),
    ("div_zero", {}, Outcome.TRAP, 0, "integer_division_by_zero"),
    ("deep_recursion", {}, Outcome.TRAP, 0, "stack_overflow"),
    ("infinite_loop", {"timeout_ms": 50}, Outcome.TIMEOUT, 0, ""),
    ("infinite_loop", {"max_fuel": 100_000}, Outcome.OUT_OF_FUEL, 0, ""),
    ("memory_bomb", {"max_memory_bytes": MIB}, Outcome.MEMORY_LIMIT, 0, ""),
    ("big_initial_memory", {}, Outcome.MEMORY_LIMIT, 0, ""),
    ("initial_memory_4gib", {}, Outcome.MEMORY_LIMIT, 0, ""),
    ("grow_refused", {}, Outcome.MEMORY_LIMIT, 0, ""),
    ("grow_refused_exit", {}, Outcome.NONZERO_EXIT, 3, ""),
    ("grow_past_own_maximum", {}, Outcome.TRAP, 0, "unreachable"),
    ("grow_within_large_maximum", {}, Outcome.SUCCESS, 0, ""),
    ("huge_output", {"max_stdout_bytes": 1000}, Outcome.OUTPUT_LIMIT, 0, ""),
    ("garbage", {}, Outcome.INVALID_MODULE, 0, ""),
    ("no_start", {}, Outcome.INVALID_MODULE, 0, ""),
    ("unknown_import", {}, Outcome.UNKNOWN_IMPORT, 0, ""),
]


@pytest.mark.parametrize(
    ("name", "limits", "outcome", "exit_code", "trap_code"),
    OUTCOME_CASES,
    ids=[f"{c[0]}-{c[2].label}" for c in OUTCOME_CASES],
)
def test_outcomes(
    sandbox: Sandbox,
    modules: Modules,
    name: str,
    limits: dict[str, int],
    outcome: Outcome,
    exit_code: int,
    trap_code: str,
) -> None:
    module = modules[name]
    spec = JobSpec(
        module_sha256=sha(module),
        args=(),
        env=(),
        stdin=b"",
        limits=dataclasses.replace(DEFAULT_LIMITS, **limits),
    )
    ex = sandbox.run(spec, module)
    assert ex.outcome is outcome, ex.detail
    assert ex.exit_code == exit_code
    assert ex.trap_code == trap_code
    if outcome not in (Outcome.SUCCESS, Outcome.NONZERO_EXIT):
        assert ex.detail
    assert ex.finished_at_ns >= ex.started_at_ns
    assert ex.fuel_consumed >= 0


def test_outcome_details(sandbox: Sandbox, modules: Modules) -> None:
    timeout = run(sandbox, modules["infinite_loop"], timeout_ms=50)
    assert "50 ms" in timeout.detail
    assert timeout.wall_time_us >= 40_000  # never stopped before its budget (minus one tick)
    fuel = run(sandbox, modules["infinite_loop"], max_fuel=100_000)
    assert fuel.fuel_consumed == 100_000
    assert "100000" in fuel.detail
    bomb = run(sandbox, modules["memory_bomb"], max_memory_bytes=MIB)
    assert str(MIB) in bomb.detail
    output = run(sandbox, modules["huge_output"], max_stdout_bytes=1000)
    assert output.stdout == b"x" * 1000
    assert "stdout" in output.detail
    garbage = run(sandbox, modules["garbage"])
    assert "magic" in garbage.detail
    no_start = run(sandbox, modules["no_start"])
    assert "_start" in no_start.detail
    unknown = run(sandbox, modules["unknown_import"])
    assert "not_provided_by_plasm" in unknown.detail


def test_stdout_and_stderr_are_separate(sandbox: Sandbox, modules: Modules) -> None:
    ex = run(sandbox, modules["stderr_write"])
    assert ex.stdout == b"to stdout\n"
    assert ex.stderr == b"to stderr\n"


# -- WASI wiring ---------------------------------------------------------------------------


def test_stdin_is_passed_exactly(sandbox: Sandbox, modules: Modules) -> None:
    stdin = bytes(range(256)) * 400 + b"\x00tail"  # ~100 KiB, every byte value, NULs
    ex = run(sandbox, modules["hello"], stdin=stdin)
    assert ex.outcome is Outcome.SUCCESS
    assert ex.stdout == stdin[::-1]
    assert ex.stderr == b""


def test_empty_stdin(sandbox: Sandbox, modules: Modules) -> None:
    ex = run(sandbox, modules["hello"])
    assert ex.outcome is Outcome.SUCCESS
    assert ex.stdout == b""


def test_args_and_env_are_passed_exactly_and_nothing_is_inherited(
    sandbox: Sandbox, modules: Modules, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLASM_HOST_SECRET", "must-not-leak")
    args = ("prog", "two words", "", "ünï✓", "--flag=x=y")
    env = (("B_SECOND", "2"), ("A_FIRST", "1"), ("EMPTY", ""), ("EQ", "a=b"), ("U", "wörld"))
    ex = run(sandbox, modules["args_env"], args=args, env=env)
    assert ex.outcome is Outcome.SUCCESS, ex.detail
    expected = "".join(f"argv[{i}]={a}\n" for i, a in enumerate(args))
    expected += "".join(f"env {k}={v}\n" for k, v in env)  # order kept
    assert ex.stdout.decode("utf-8") == expected
    assert b"must-not-leak" not in ex.stdout


def test_no_args_no_env(
    sandbox: Sandbox, modules: Modules, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLASM_HOST_SECRET", "must-not-leak")
    ex = run(sandbox, modules["args_env"])
    assert ex.outcome is Outcome.SUCCESS
    assert ex.stdout == b""  # no argv[0] unless the client sends one, no host env


def test_exit_code_from_the_guest_environment(sandbox: Sandbox, modules: Modules) -> None:
    ex = run(sandbox, modules["args_env"], args=("p",), env=(("PLASM_EXIT", "42"),))
    assert ex.outcome is Outcome.NONZERO_EXIT
    assert ex.exit_code == 42
    assert ex.stdout == b"argv[0]=p\nenv PLASM_EXIT=42\n"


@pytest.mark.parametrize("code", [0, 1, 3, 255, 256, 2**31 - 1])
def test_proc_exit_codes(sandbox: Sandbox, code: int) -> None:
    ex = run(sandbox, proc_exit_module(code))
    assert ex.outcome is (Outcome.SUCCESS if code == 0 else Outcome.NONZERO_EXIT)
    assert ex.exit_code == code
    assert ex.trap_code == ""
    assert ex.detail == ""


@pytest.mark.parametrize("code", [-1, -2, -(2**31)])
def test_proc_exit_negative_codes_fit_the_receipt(sandbox: Sandbox, code: int) -> None:
    """proc_exit takes an i32; receipt exit_code is int32. A guest calling
    proc_exit(-1) (exit status 0xFFFFFFFF) must still get a signable receipt."""
    ex = run(sandbox, proc_exit_module(code))
    assert ex.outcome is Outcome.NONZERO_EXIT
    assert -(2**31) <= ex.exit_code < 2**31, ex.exit_code
    assert ex.exit_code == code
    h = sha(b"")
    receipt = Receipt(
        job_id="0" * 32,
        module_sha256=h,
        input_sha256=h,
        stdout_sha256=h,
        stderr_sha256=h,
        stdout_bytes=0,
        stderr_bytes=0,
        outcome=ex.outcome,
        exit_code=ex.exit_code,
        trap_code=ex.trap_code,
        fuel_consumed=ex.fuel_consumed,
        wall_time_us=ex.wall_time_us,
        limits=DEFAULT_LIMITS,
        runtime=sandbox.engine.runtime,
        executor_node_id=h,
        requester_node_id="",
        started_at_ns=ex.started_at_ns,
        finished_at_ns=ex.finished_at_ns,
    )
    assert codec.decode_receipt_body(codec.encode_receipt(receipt)).exit_code == code


# -- output caps ---------------------------------------------------------------------------


def test_output_exactly_at_the_cap_succeeds(sandbox: Sandbox, modules: Modules) -> None:
    stdin = bytes(range(256)) * 40
    ex = run(sandbox, modules["hello"], stdin=stdin, max_stdout_bytes=len(stdin))
    assert ex.outcome is Outcome.SUCCESS, ex.detail
    assert ex.stdout == stdin[::-1]


def test_output_one_over_the_cap_is_cut_exactly(sandbox: Sandbox, modules: Modules) -> None:
    stdin = bytes(range(256)) * 40
    cap = len(stdin) - 1
    ex = run(sandbox, modules["hello"], stdin=stdin, max_stdout_bytes=cap)
    assert ex.outcome is Outcome.OUTPUT_LIMIT
    assert len(ex.stdout) == cap
    assert ex.stdout == stdin[::-1][:cap]


@pytest.mark.parametrize("cap", [1, 65_535, 65_536, 65_537, 3 * 65_536 + 17])
def test_output_cap_is_exact(sandbox: Sandbox, modules: Modules, cap: int) -> None:
    ex = run(sandbox, modules["huge_output"], max_stdout_bytes=cap)
    assert ex.outcome is Outcome.OUTPUT_LIMIT
    assert ex.stdout == b"x" * cap


def test_stderr_cap(sandbox: Sandbox, modules: Modules) -> None:
    ex = run(sandbox, modules["stderr_write"], max_stderr_bytes=5)
    assert ex.outcome is Outcome.OUTPUT_LIMIT
    assert ex.stderr == b"to st"
    assert ex.stdout == b""  # stopped before it wrote to stdout
    assert "stderr" in ex.detail


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_jobs_do_not_share_output(sandbox: Sandbox, modules: Modules) -> None:
    hello = modules["hello"]
    run(sandbox, hello)  # compile once up front
    threads_n, rounds = 8, 4
    barrier = threading.Barrier(threads_n)
    results: dict[tuple[int, int], Execution] = {}
    errors: list[BaseException] = []

    def stdin_for(t: int, r: int) -> bytes:
        return f"thread {t} round {r} ".encode() * (500 + 97 * t)

    def worker(t: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait(timeout=30)
                results[t, r] = run(sandbox, hello, stdin=stdin_for(t, r))
        except BaseException as err:
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert errors == []
    assert len(results) == threads_n * rounds
    for (t, r), ex in results.items():
        assert ex.outcome is Outcome.SUCCESS
        assert ex.stdout == stdin_for(t, r)[::-1], (t, r)
        assert ex.stderr == b""


def test_concurrent_first_runs_compile_once(engine: SandboxEngine, tmp_path: Path) -> None:
    cache = make_cache(engine, tmp_path / "c")
    sandbox = Sandbox(engine, cache)
    module = proc_exit_module(7)
    out: list[Execution] = []
    lock = threading.Lock()

    def worker() -> None:
        ex = run(sandbox, module)
        with lock:
            out.append(ex)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert [ex.exit_code for ex in out] == [7] * 8
    assert cache.compiles == 1


# -- the module cache ----------------------------------------------------------------------


def artifact_path(directory: Path, module: bytes) -> Path:
    return directory / "compiled" / f"{sha(module)}.cwasm"


def test_second_run_does_not_recompile(
    engine: SandboxEngine, modules: Modules, tmp_path: Path
) -> None:
    cache = make_cache(engine, tmp_path / "c")
    sandbox = Sandbox(engine, cache)
    hello = modules["hello"]
    for text in (b"one", b"two", b"three"):
        assert run(sandbox, hello, stdin=text).stdout == text[::-1]
    assert cache.compiles == 1
    assert cache.cached_count() == 1
    assert artifact_path(tmp_path / "c", hello).is_file()


def test_fresh_cache_loads_our_artifact_without_compiling(
    engine: SandboxEngine, modules: Modules, tmp_path: Path
) -> None:
    directory = tmp_path / "c"
    hello = modules["hello"]
    first = make_cache(engine, directory)
    run(Sandbox(engine, first), hello)
    assert first.compiles == 1
    second = make_cache(engine, directory)
    ex = run(Sandbox(engine, second), hello, stdin=b"abc")
    assert ex.stdout == b"cba"
    assert second.compiles == 0


def tamper(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "how", ["artifact_byte", "last_byte", "mac_byte", "truncated", "short", "empty"]
)
def test_tampered_artifact_is_not_loaded(
    engine: SandboxEngine, modules: Modules, tmp_path: Path, how: str
) -> None:
    """Security: never deserialize native code this node did not write."""
    directory = tmp_path / "c"
    hello = modules["hello"]
    run(Sandbox(engine, make_cache(engine, directory)), hello)
    path = artifact_path(directory, hello)
    size = path.stat().st_size
    if how == "artifact_byte":
        tamper(path, MAC_BYTES + (size - MAC_BYTES) // 2)
    elif how == "last_byte":
        tamper(path, size - 1)
    elif how == "mac_byte":
        tamper(path, 0)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "short":
        path.write_bytes(path.read_bytes()[: MAC_BYTES - 1])
    else:
        path.write_bytes(b"")
    cache = make_cache(engine, directory)
    ex = run(Sandbox(engine, cache), hello, stdin=b"xyz")
    assert ex.outcome is Outcome.SUCCESS
    assert ex.stdout == b"zyx"
    assert cache.compiles == 1
    # The bad file was replaced by a good one, which the next cache loads.
    third = make_cache(engine, directory)
    run(Sandbox(engine, third), hello)
    assert third.compiles == 0


def test_artifact_from_another_mac_key_is_not_loaded(
    engine: SandboxEngine, modules: Modules, tmp_path: Path
) -> None:
    directory = tmp_path / "c"
    hello = modules["hello"]
    run(Sandbox(engine, make_cache(engine, directory, OTHER_MAC_KEY)), hello)
    cache = make_cache(engine, directory, MAC_KEY)
    assert run(Sandbox(engine, cache), hello, stdin=b"ab").stdout == b"ba"
    assert cache.compiles == 1


def test_artifact_of_another_module_is_not_loaded(
    engine: SandboxEngine, modules: Modules, tmp_path: Path
) -> None:
    """A genuine artifact (our own key) renamed to another module's hash is refused:
    the MAC binds the module hash."""
    directory = tmp_path / "c"
    hello, exit_3 = modules["hello"], modules["exit_3"]
    run(Sandbox(engine, make_cache(engine, directory)), exit_3)
    artifact_path(directory, exit_3).replace(artifact_path(directory, hello))
    cache = make_cache(engine, directory)
    ex = run(Sandbox(engine, cache), hello, stdin=b"ok")
    assert ex.outcome is Outcome.SUCCESS
    assert ex.stdout == b"ko"
    assert cache.compiles == 1


def test_artifact_from_another_engine_configuration_is_not_loaded(
    engine: SandboxEngine, modules: Modules, tmp_path: Path
) -> None:
    directory = tmp_path / "c"
    module = modules["exit_3"]
    run(Sandbox(engine, make_cache(engine, directory)), module)
    other = SandboxEngine(EngineSettings(max_wasm_stack=256 * 1024))
    try:
        assert other.fingerprint != engine.fingerprint
        cache = make_cache(other, directory)
        assert run(Sandbox(other, cache), module).exit_code == 3
        assert cache.compiles == 1
    finally:
        other.close()


def test_memory_only_cache(engine: SandboxEngine, modules: Modules) -> None:
    cache = make_cache(engine, None)
    sandbox = Sandbox(engine, cache)
    assert run(sandbox, modules["exit_3"]).exit_code == 3
    assert run(sandbox, modules["exit_3"]).exit_code == 3
    assert cache.compiles == 1


def test_raw_module_kept_for_submit_by_hash(
    engine: SandboxEngine, modules: Modules, tmp_path: Path
) -> None:
    directory = tmp_path / "c"
    hello = modules["hello"]
    digest = sha(hello)
    first = make_cache(engine, directory)
    assert not first.has_module(digest)
    first.put_module(digest, hello)
    assert first.has_module(digest)
    second = make_cache(engine, directory)
    assert second.has_module(digest)
    ex = run(Sandbox(engine, second), None, module_sha256=digest, stdin=b"hi")
    assert ex.stdout == b"ih"
    assert second.compiles == 1


def test_corrupted_raw_module_is_treated_as_absent(
    engine: SandboxEngine, modules: Modules, tmp_path: Path
) -> None:
    directory = tmp_path / "c"
    hello = modules["hello"]
    digest = sha(hello)
    make_cache(engine, directory).put_module(digest, hello)
    raw = directory / "modules" / f"{digest}.wasm"
    raw.write_bytes(raw.read_bytes()[:-1])
    cache = make_cache(engine, directory)
    with pytest.raises(ModuleUnavailableError):
        run(Sandbox(engine, cache), None, module_sha256=digest)
    assert cache.compiles == 0


def test_unknown_module_without_bytes(engine: SandboxEngine, tmp_path: Path) -> None:
    cache = make_cache(engine, tmp_path / "c")
    with pytest.raises(ModuleUnavailableError):
        run(Sandbox(engine, cache), None, module_sha256="ab" * 32)


def test_module_size_limit(engine: SandboxEngine, modules: Modules, tmp_path: Path) -> None:
    hello = modules["hello"]
    cache = make_cache(engine, tmp_path / "c", max_module_bytes=len(hello) - 1)
    ex = run(Sandbox(engine, cache), hello)
    assert ex.outcome is Outcome.INVALID_MODULE
    assert str(len(hello) - 1) in ex.detail
    assert cache.compiles == 0
    at_limit = make_cache(engine, tmp_path / "d", max_module_bytes=len(hello))
    assert run(Sandbox(engine, at_limit), hello).outcome is Outcome.SUCCESS


def test_compiled_size_limit(engine: SandboxEngine, modules: Modules, tmp_path: Path) -> None:
    directory = tmp_path / "c"
    hello = modules["hello"]
    cache = make_cache(engine, directory, max_compiled_bytes=64)
    ex = run(Sandbox(engine, cache), hello)
    assert ex.outcome is Outcome.COMPILE_LIMIT
    assert "64" in ex.detail
    assert ex.stdout == b""
    assert not artifact_path(directory, hello).exists()
    # The failure is remembered: no second compile.
    assert run(Sandbox(engine, cache), hello).outcome is Outcome.COMPILE_LIMIT
    assert cache.compiles == 1


def test_lru_evicts_beyond_max_cached_modules(engine: SandboxEngine, modules: Modules) -> None:
    cache = make_cache(engine, None, max_cached_modules=2)
    sandbox = Sandbox(engine, cache)
    for name in ("exit_0", "exit_3", "exit_255"):
        run(sandbox, modules[name])
    assert cache.cached_count() == 2
    assert cache.compiles == 3
    run(sandbox, modules["exit_0"])  # evicted, compiled again
    assert cache.compiles == 4
    compiled = cache.get_or_compile(sha(modules["exit_0"]), None)
    assert isinstance(compiled, CompiledModule)
    assert cache.compiles == 4


def test_limits_are_per_job(sandbox: Sandbox, modules: Modules) -> None:
    """A tight job and a generous job on the same compiled module do not affect each other."""
    hello = modules["hello"]
    tight = run(sandbox, hello, stdin=b"abcdef", max_stdout_bytes=2)
    loose = run(sandbox, hello, stdin=b"abcdef")
    assert tight.outcome is Outcome.OUTPUT_LIMIT
    assert tight.stdout == b"fe"
    assert loose.outcome is Outcome.SUCCESS
    assert loose.stdout == b"fedcba"
