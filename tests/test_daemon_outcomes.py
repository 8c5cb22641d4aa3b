"""Every job outcome, through a real plasmd subprocess.

For each case: the result has the expected outcome (and exit/trap code), its
receipt verifies offline against what was sent and received, the stored
receipt is the same envelope, and afterwards the node is still healthy: a
hello job succeeds and grpc.health.v1 reports SERVING.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    MIB,
    Daemon,
    DaemonFactory,
    WasmModules,
    assert_receipt_matches,
    outcome_name,
    submit,
    verify_result,
)
from plasm.v1 import receipt_pb2, service_pb2

Outcome = receipt_pb2.Outcome

SECRET_ENV = {"PLASM_SECRET_TEST": "leak"}


@pytest.fixture(scope="module")
def node(plasmd_module: DaemonFactory) -> Daemon:
    # A host variable the guest must never see.
    return plasmd_module("[jobs]\nslots = 2\n", env=SECRET_ENV)


@dataclass(frozen=True)
class Case:
    module: str
    outcome: int
    limits: dict[str, int] = field(default_factory=dict)
    stdin: bytes = b""
    exit_code: int = 0
    trap_code: str | None = None  # None: any (must be non-empty for TRAP)
    stdout: bytes | None = None
    stderr: bytes | None = None
    detail_contains: str = ""


CASES: dict[str, Case] = {
    "hello": Case(
        "hello", Outcome.OUTCOME_SUCCESS, stdin=b"Hello, World", stdout=b"dlroW ,olleH", stderr=b""
    ),
    "exit_0": Case("exit_0", Outcome.OUTCOME_SUCCESS, stdout=b""),
    "exit_3": Case("exit_3", Outcome.OUTCOME_NONZERO_EXIT, exit_code=3),
    "exit_255": Case("exit_255", Outcome.OUTCOME_NONZERO_EXIT, exit_code=255),
    "trap_unreachable": Case("trap_unreachable", Outcome.OUTCOME_TRAP, trap_code="unreachable"),
    "div_zero": Case("div_zero", Outcome.OUTCOME_TRAP, trap_code="integer_division_by_zero"),
    "deep_recursion": Case("deep_recursion", Outcome.OUTCOME_TRAP, trap_code="stack_overflow"),
    "timeout": Case(
        "infinite_loop",
        Outcome.OUTCOME_TIMEOUT,
        limits={"timeout_ms": 300},
        detail_contains="300 ms",
    ),
    "out_of_fuel": Case(
        "infinite_loop",
        Outcome.OUTCOME_OUT_OF_FUEL,
        limits={"max_fuel": 1_000_000},
        detail_contains="1000000",
    ),
    "memory_bomb": Case(
        "memory_bomb", Outcome.OUTCOME_MEMORY_LIMIT, limits={"max_memory_bytes": 8 * MIB}
    ),
    "big_initial_memory": Case(
        "big_initial_memory", Outcome.OUTCOME_MEMORY_LIMIT, limits={"max_memory_bytes": 16 * MIB}
    ),
    # Initial memory above anything a job may have: the pooling allocator
    # would refuse the module at compile time; it is still a memory limit.
    "initial_memory_4gib": Case(
        "initial_memory_4gib",
        Outcome.OUTCOME_MEMORY_LIMIT,
        limits={"max_memory_bytes": 64 * MIB},
        stdout=b"",
        detail_contains="4294967296 bytes of initial linear memory",
    ),
    # One large memory.grow refused by the limit (returns -1), then a trap.
    "grow_refused": Case(
        "grow_refused",
        Outcome.OUTCOME_MEMORY_LIMIT,
        limits={"max_memory_bytes": 64 * MIB},
        detail_contains=f"refused at the job's memory limit of {64 * MIB} bytes",
    ),
    # The same refusal, handled: the guest exits on purpose and keeps its code.
    "grow_refused_exit": Case(
        "grow_refused_exit",
        Outcome.OUTCOME_NONZERO_EXIT,
        limits={"max_memory_bytes": 64 * MIB},
        exit_code=3,
    ),
    # Refused by the module's own maximum, not by the job's limit.
    "grow_past_own_maximum": Case(
        "grow_past_own_maximum",
        Outcome.OUTCOME_TRAP,
        limits={"max_memory_bytes": 64 * MIB},
        trap_code="unreachable",
    ),
    # A declared maximum above the limit is no error while the guest stays below it.
    "grow_within_large_maximum": Case(
        "grow_within_large_maximum",
        Outcome.OUTCOME_SUCCESS,
        limits={"max_memory_bytes": 64 * MIB},
    ),
    "huge_output": Case(
        "huge_output",
        Outcome.OUTCOME_OUTPUT_LIMIT,
        limits={"max_stdout_bytes": 100_000},
        stdout=b"x" * 100_000,
    ),
    "garbage": Case("garbage", Outcome.OUTCOME_INVALID_MODULE, stdout=b"", detail_contains="magic"),
    "no_start": Case(
        "no_start", Outcome.OUTCOME_INVALID_MODULE, stdout=b"", detail_contains="_start"
    ),
    "unknown_import": Case(
        "unknown_import", Outcome.OUTCOME_UNKNOWN_IMPORT, stdout=b"", detail_contains="not_provided"
    ),
    "stderr_write": Case(
        "stderr_write", Outcome.OUTCOME_SUCCESS, stdout=b"to stdout\n", stderr=b"to stderr\n"
    ),
}


def assert_still_healthy(node: Daemon, wasm: WasmModules) -> None:
    hello = submit(node.stub, wasm.bytes("hello"), stdin=b"abc")
    assert hello.outcome == Outcome.OUTCOME_SUCCESS, hello.detail
    assert hello.stdout == b"cba"
    assert node.health_status() == "SERVING"
    assert node.health_status("plasm.v1.PlasmService") == "SERVING"


def run_case(node: Daemon, wasm: WasmModules, case: Case, module: bytes | None = None) -> Any:
    module = wasm.bytes(case.module) if module is None else module
    args = (f"{case.module}.wasm",)
    result = submit(node.stub, module, stdin=case.stdin, args=args, **case.limits)
    assert len(result.job_id) == 32
    assert result.outcome == case.outcome, (
        f"{case.module}: expected {outcome_name(case.outcome)}, got "
        f"{outcome_name(result.outcome)} ({result.detail})"
    )
    assert result.exit_code == case.exit_code
    if case.outcome == Outcome.OUTCOME_TRAP:
        assert result.trap_code, "a TRAP names its trap code"
        if case.trap_code is not None:
            assert result.trap_code == case.trap_code
    else:
        assert result.trap_code == ""
    if case.stdout is not None:
        assert result.stdout == case.stdout
    if case.stderr is not None:
        assert result.stderr == case.stderr
    assert case.detail_contains in result.detail

    verification = verify_result(
        result, module=module, args=args, stdin=case.stdin, node_id=node.node_id
    )
    assert_receipt_matches(result, verification)
    body = verification.body
    assert body is not None
    assert body.module_sha256 == hashlib.sha256(module).hexdigest()
    assert body.executor_node_id == node.node_id
    for name, value in case.limits.items():
        assert getattr(body.limits, name) == value, f"receipt limit {name}"

    stored = node.stub.GetReceipt(service_pb2.GetReceiptRequest(job_id=result.job_id), timeout=10)
    assert stored.receipt.receipt == result.receipt
    assert stored.receipt.body.outcome == result.outcome
    return result


@pytest.mark.parametrize("name", list(CASES))
def test_outcome(node: Daemon, wasm: WasmModules, name: str) -> None:
    run_case(node, wasm, CASES[name])
    assert_still_healthy(node, wasm)


def test_compile_limit(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    """Compiled code above sandbox.max_compiled_bytes: COMPILE_LIMIT, remembered."""
    node = plasmd("[sandbox]\nmax_compiled_bytes = 32768\n")
    case = Case(
        "hello", Outcome.OUTCOME_COMPILE_LIMIT, stdout=b"", detail_contains="the limit is 32768"
    )
    for _ in range(2):
        run_case(node, wasm, case)
    assert node.node_info().cached_modules == 0
    small = submit(node.stub, wasm.bytes("exit_3"))
    assert small.outcome == Outcome.OUTCOME_NONZERO_EXIT, small.detail


# Outcomes whose real-daemon tests live elsewhere: CANCELLED needs a shutdown
# (test_daemon_lifecycle's drain timeout) or a Cancel (test_cli_watch).
TESTED_ELSEWHERE = {"OUTCOME_CANCELLED"}


def test_every_documented_outcome_has_a_real_daemon_test() -> None:
    receipts_md = Path(__file__).parents[1] / "docs" / "receipts.md"
    documented = set(re.findall(r"^\| `(OUTCOME_[A-Z_]+)` \|", receipts_md.read_text(), re.M))
    assert len(documented) == len(Outcome.keys()) - 1  # all but OUTCOME_UNSPECIFIED
    tested = {outcome_name(c.outcome) for c in CASES.values()}
    tested |= {"OUTCOME_COMPILE_LIMIT"} | TESTED_ELSEWHERE  # test_compile_limit above
    assert documented <= tested, documented - tested


def test_outcome_after_cached_compile(node: Daemon, wasm: WasmModules) -> None:
    """A module that failed to compile is refused the same way the second time (cached)."""
    for _ in range(2):
        run_case(node, wasm, CASES["garbage"])
        run_case(node, wasm, CASES["unknown_import"])
        run_case(node, wasm, CASES["trap_unreachable"])
    assert_still_healthy(node, wasm)


def test_output_limit_on_stderr(node: Daemon, wasm: WasmModules) -> None:
    """stderr has its own cap, independent of stdout's."""
    result = submit(node.stub, wasm.bytes("stderr_write"), max_stderr_bytes=4)
    assert result.outcome == Outcome.OUTCOME_OUTPUT_LIMIT, result.detail
    assert result.stderr == b"to s"
    assert result.stdout == b""
    assert "stderr" in result.detail
    assert_receipt_matches(result, verify_result(result, module=wasm.bytes("stderr_write")))
    assert_still_healthy(node, wasm)


def test_proc_exit_negative_code(node: Daemon, wasm: WasmModules) -> None:
    """proc_exit(-1): WASI exit codes are u32; the job must still end with a signed receipt.

    exit_3.wasm with its `i32.const 3` (0x41 0x03) patched to `i32.const -1` (0x41 0x7f).
    """
    original = wasm.bytes("exit_3")
    assert original.count(b"\x41\x03") == 1
    module = original.replace(b"\x41\x03", b"\x41\x7f")
    result = submit(node.stub, module)
    assert result.outcome == Outcome.OUTCOME_NONZERO_EXIT, result.detail
    assert result.exit_code == -1  # the u32 exit code as the receipt's int32
    assert_receipt_matches(result, verify_result(result, module=module))
    assert_still_healthy(node, wasm)


def test_args_env_reach_guest_and_host_env_does_not(node: Daemon, wasm: WasmModules) -> None:
    module = wasm.bytes("args_env")
    args = ("args_env.wasm", "first", "with space", "ünïcødé", "")
    env = (("K", "V"), ("EMPTY", ""), ("EQ", "a=b"))
    result = submit(node.stub, module, args=args, env=env)
    assert result.outcome == Outcome.OUTCOME_SUCCESS, result.detail
    expected = "".join(f"argv[{i}]={a}\n" for i, a in enumerate(args)) + "".join(
        f"env {k}={v}\n" for k, v in env
    )
    out = result.stdout.decode()
    assert out == expected
    # The daemon's own environment (PLASM_SECRET_TEST=leak, PATH, HOME...) stays on the host.
    assert "PLASM_SECRET_TEST" not in out
    assert "leak" not in out
    assert "PATH=" not in out
    verification = verify_result(result, module=module, args=args, env=env)
    assert_receipt_matches(result, verification)
    # The input hash covers args and env: a different env does not verify.
    wrong = verify_result(result, module=module, args=args, env=(("K", "V"),))
    assert not wrong.valid
    assert [c.name for c in wrong.checks if not c.passed] == ["input"]


def test_no_env_means_empty_environment(node: Daemon, wasm: WasmModules) -> None:
    result = submit(node.stub, wasm.bytes("args_env"), args=("prog",))
    assert result.outcome == Outcome.OUTCOME_SUCCESS, result.detail
    assert result.stdout == b"argv[0]=prog\n"


def test_args_env_exit_code(node: Daemon, wasm: WasmModules) -> None:
    result = submit(node.stub, wasm.bytes("args_env"), args=("a",), env=(("PLASM_EXIT", "3"),))
    assert result.outcome == Outcome.OUTCOME_NONZERO_EXIT, result.detail
    assert result.exit_code == 3
    assert result.stdout == b"argv[0]=a\nenv PLASM_EXIT=3\n"
    assert_still_healthy(node, wasm)


def test_stdin_binary_roundtrip(node: Daemon, wasm: WasmModules) -> None:
    """hello reverses arbitrary bytes, including NULs and a buffer that must grow."""
    data = bytes(range(256)) * 64  # 16 KiB > hello's initial 4 KiB buffer
    result = submit(node.stub, wasm.bytes("hello"), stdin=data)
    assert result.outcome == Outcome.OUTCOME_SUCCESS, result.detail
    assert result.stdout == data[::-1]
    assert_receipt_matches(result, verify_result(result, stdin=data))


def test_log_has_job_finished_events(node: Daemon, wasm: WasmModules) -> None:
    result = submit(node.stub, wasm.bytes("exit_3"))
    event = node.wait_for_event(
        "job_finished", timeout=5, predicate=lambda e: e.get("job_id") == result.job_id
    )
    assert event is not None
    assert event["outcome"] == "nonzero_exit"
    assert event["exit_code"] == 3
    assert event["module_sha256"] == wasm.sha256("exit_3")
