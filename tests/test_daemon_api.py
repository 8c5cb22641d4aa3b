"""The gRPC API of a real plasmd: refusals with the right status and reason,
submit-by-hash, receipts and paging, Verify, GetNodeInfo, back-pressure and
many concurrent clients.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Any

import grpc
import pytest
from conftest import (
    MIB,
    Daemon,
    DaemonFactory,
    WasmModules,
    assert_receipt_matches,
    error_status,
    make_request,
    outcome_name,
    rpc_error,
    submit,
    verify_result,
    wait_until,
)
from plasm.v1 import capability_pb2, envelope_pb2, receipt_pb2, service_pb2

from plasm_grpc import __version__
from plasm_grpc.api import codec
from plasm_grpc.core import envelope as envelopes
from plasm_grpc.core.keys import NodeKey
from plasm_grpc.core.limits import MAXIMUM_LIMITS

Outcome = receipt_pb2.Outcome
SC = grpc.StatusCode

MAX_MESSAGE = 2 * MIB
MAX_MODULE = 512 * 1024
MAX_STDIN = 256 * 1024
MAX_MEMORY = 128 * MIB
MAX_STDOUT = 512 * 1024
MAX_STDERR = 256 * 1024

API_CONFIG = f"""
[grpc]
max_message_bytes = {MAX_MESSAGE}

[jobs]
slots = 2
max_module_bytes = {MAX_MODULE}
max_stdin_bytes = {MAX_STDIN}
max_args = 64

# stdout + stderr + 1 MiB must fit max_message_bytes (plasmd refuses otherwise).
[limits.max]
max_memory_bytes = {MAX_MEMORY}
max_fuel = {MAXIMUM_LIMITS.max_fuel}
timeout_ms = {MAXIMUM_LIMITS.timeout_ms}
max_stdout_bytes = {MAX_STDOUT}
max_stderr_bytes = {MAX_STDERR}

[limits.default]
max_stdout_bytes = {MAX_STDOUT}
max_stderr_bytes = {MAX_STDERR}
"""


@pytest.fixture(scope="module")
def node(plasmd_module: DaemonFactory) -> Daemon:
    return plasmd_module(API_CONFIG)


@pytest.fixture(scope="module")
def hello_job(node: Daemon, wasm: WasmModules) -> Any:
    """One successful hello job: (result, module, stdin)."""
    module = wasm.bytes("hello")
    result = submit(node.stub, module, stdin=b"receipt me", args=("hello",))
    assert result.outcome == Outcome.OUTCOME_SUCCESS, result.detail
    return result, module


def assert_serves(node: Daemon, wasm: WasmModules) -> None:
    result = submit(node.stub, wasm.bytes("hello"), stdin=b"still here")
    assert result.outcome == Outcome.OUTCOME_SUCCESS, result.detail
    assert result.stdout == b"ereh llits"


def refused(node: Daemon, request: service_pb2.SubmitRequest) -> tuple[Any, str, str]:
    return rpc_error(lambda: node.stub.Submit(request, timeout=30))


# -- Submit: malformed and oversized requests -----------------------------------------------


def test_module_hash_mismatch(node: Daemon, wasm: WasmModules) -> None:
    request = make_request(
        wasm.bytes("hello"), module_sha256=hashlib.sha256(b"something else").hexdigest()
    )
    code, reason, details = refused(node, request)
    assert (code, reason) == (SC.INVALID_ARGUMENT, "ERROR_REASON_MODULE_HASH_MISMATCH")
    assert wasm.sha256("hello") in details
    assert_serves(node, wasm)


def test_matching_module_hash_is_accepted(node: Daemon, wasm: WasmModules) -> None:
    result = submit(node.stub, wasm.bytes("hello"), module_sha256=wasm.sha256("hello"))
    assert result.outcome == Outcome.OUTCOME_SUCCESS


@pytest.mark.parametrize(
    "bad",
    [
        "not-hex",
        "ab" * 31,  # 62 characters
        "ab" * 33,  # 66 characters
        "AB" * 32,  # upper case
        "g" * 64,
    ],
)
@pytest.mark.parametrize("with_bytes", [True, False])
def test_bad_hex_module_sha256(node: Daemon, wasm: WasmModules, bad: str, with_bytes: bool) -> None:
    module = wasm.bytes("hello") if with_bytes else b""
    code, reason, details = refused(node, make_request(module, module_sha256=bad))
    assert (code, reason) == (SC.INVALID_ARGUMENT, "ERROR_REASON_INVALID_REQUEST")
    assert "module_sha256" in details


def test_no_module_and_no_hash(node: Daemon) -> None:
    code, reason, _ = refused(node, make_request(b""))
    assert (code, reason) == (SC.INVALID_ARGUMENT, "ERROR_REASON_INVALID_REQUEST")


def test_submit_by_unknown_hash(node: Daemon, wasm: WasmModules) -> None:
    unknown = hashlib.sha256(b"never uploaded " + os.urandom(8)).hexdigest()
    code, reason, details = refused(node, make_request(module_sha256=unknown))
    assert (code, reason) == (SC.NOT_FOUND, "ERROR_REASON_MODULE_NOT_FOUND")
    assert unknown in details
    assert_serves(node, wasm)


def test_submit_by_hash_after_upload_and_after_restart(
    plasmd: DaemonFactory, wasm: WasmModules
) -> None:
    node = plasmd()
    module, sha = wasm.bytes("primes"), wasm.sha256("primes")
    code, reason, _ = rpc_error(lambda: node.stub.Submit(make_request(module_sha256=sha)))
    assert (code, reason) == (SC.NOT_FOUND, "ERROR_REASON_MODULE_NOT_FOUND")

    first = submit(node.stub, module, args=("primes", "1000"))
    assert first.outcome == Outcome.OUTCOME_SUCCESS, first.detail
    assert first.stdout == b"primes below 1000: 168\n"

    by_hash = submit(node.stub, b"", module_sha256=sha, args=("primes", "100"))
    assert by_hash.outcome == Outcome.OUTCOME_SUCCESS, by_hash.detail
    assert by_hash.stdout == b"primes below 100: 25\n"
    verification = verify_result(by_hash, module=module, args=("primes", "100"))
    assert_receipt_matches(by_hash, verification)
    assert verification.body is not None
    assert verification.body.module_sha256 == sha

    node.restart()
    after = submit(node.stub, b"", module_sha256=sha, args=("primes", "10"))
    assert after.outcome == Outcome.OUTCOME_SUCCESS, after.detail
    assert after.stdout == b"primes below 10: 4\n"
    assert_receipt_matches(after, verify_result(after, module=module, args=("primes", "10")))


def test_module_too_large(node: Daemon, wasm: WasmModules) -> None:
    module = b"\x00asm\x01\x00\x00\x00" + b"\x00" * MAX_MODULE  # 8 bytes over the cap
    code, reason, details = refused(node, make_request(module))
    assert (code, reason) == (SC.RESOURCE_EXHAUSTED, "ERROR_REASON_MODULE_TOO_LARGE")
    assert str(MAX_MODULE) in details
    assert_serves(node, wasm)


def test_request_above_grpc_message_limit(node: Daemon, wasm: WasmModules) -> None:
    request = make_request(wasm.bytes("hello"), stdin=b"x" * (MAX_MESSAGE + 1024))
    code, reason, _ = refused(node, request)
    # Refused by gRPC itself before any handler runs: no plasm reason.
    assert code == SC.RESOURCE_EXHAUSTED
    assert reason == ""
    assert_serves(node, wasm)
    assert node.running


def test_stdin_too_large(node: Daemon, wasm: WasmModules) -> None:
    code, reason, details = refused(
        node, make_request(wasm.bytes("hello"), stdin=b"x" * (MAX_STDIN + 1))
    )
    assert (code, reason) == (SC.RESOURCE_EXHAUSTED, "ERROR_REASON_INPUT_TOO_LARGE")
    assert str(MAX_STDIN) in details
    assert_serves(node, wasm)


def test_stdin_at_the_limit_is_accepted(node: Daemon, wasm: WasmModules) -> None:
    data = bytes(range(256)) * (MAX_STDIN // 256)
    assert len(data) == MAX_STDIN
    result = submit(node.stub, wasm.bytes("hello"), stdin=data)
    assert result.outcome == Outcome.OUTCOME_SUCCESS, result.detail
    assert result.stdout == data[::-1]


def test_too_many_args(node: Daemon, wasm: WasmModules) -> None:
    code, reason, _ = refused(node, make_request(wasm.bytes("hello"), args=["a"] * 65))
    assert (code, reason) == (SC.RESOURCE_EXHAUSTED, "ERROR_REASON_INPUT_TOO_LARGE")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_memory_bytes", MAX_MEMORY + 1),
        ("max_fuel", MAXIMUM_LIMITS.max_fuel + 1),
        ("timeout_ms", MAXIMUM_LIMITS.timeout_ms + 1),
        ("max_stdout_bytes", MAX_STDOUT + 1),
        ("max_stderr_bytes", MAX_STDERR + 1),
    ],
)
def test_limits_above_max(node: Daemon, wasm: WasmModules, field: str, value: int) -> None:
    code, reason, details = refused(node, make_request(wasm.bytes("hello"), **{field: value}))
    assert (code, reason) == (SC.INVALID_ARGUMENT, "ERROR_REASON_LIMITS_TOO_HIGH")
    assert field in details


def test_limits_at_max_are_accepted_and_recorded(node: Daemon, wasm: WasmModules) -> None:
    result = submit(node.stub, wasm.bytes("hello"), stdin=b"ab", max_memory_bytes=MAX_MEMORY)
    assert result.outcome == Outcome.OUTCOME_SUCCESS, result.detail
    body = codec.decode_receipt_body(result.receipt.payload)
    assert body.limits.max_memory_bytes == MAX_MEMORY
    # Zero fields were filled in with the node's defaults, not left at zero.
    assert body.limits.timeout_ms > 0
    assert body.limits.max_fuel > 0


@pytest.mark.parametrize(
    ("args", "env"),
    [
        ((), (("A=B", "v"),)),
        ((), (("", "v"),)),
        ((), (("=", ""),)),
        (("nul\x00arg",), ()),
        ((), (("K", "nul\x00value"),)),
    ],
    ids=["eq-in-name", "empty-name", "only-eq", "nul-in-arg", "nul-in-value"],
)
def test_bad_args_or_env(
    node: Daemon, wasm: WasmModules, args: tuple[str, ...], env: tuple[tuple[str, str], ...]
) -> None:
    code, reason, _ = refused(node, make_request(wasm.bytes("args_env"), args=args, env=env))
    assert (code, reason) == (SC.INVALID_ARGUMENT, "ERROR_REASON_INVALID_REQUEST")


# -- placement --------------------------------------------------------------------------------


def test_placement_on_an_unknown_peer_says_why(node: Daemon, wasm: WasmModules) -> None:
    other = hashlib.sha256(b"another node").hexdigest()
    placement = capability_pb2.PlacementRequirements(
        mode=capability_pb2.PLACEMENT_MODE_PEER, peer_node_id=other
    )
    code, reason, message = refused(node, make_request(wasm.bytes("hello"), placement=placement))
    assert (code, reason) == (SC.UNAVAILABLE, "ERROR_REASON_NO_WORKER")
    assert other in message
    assert "not found" in message
    assert_serves(node, wasm)


@pytest.mark.parametrize("mode", ["local", "peer-self"])
def test_placement_on_this_node_runs(node: Daemon, wasm: WasmModules, mode: str) -> None:
    if mode == "local":
        placement = capability_pb2.PlacementRequirements(mode=capability_pb2.PLACEMENT_MODE_LOCAL)
    else:
        placement = capability_pb2.PlacementRequirements(
            mode=capability_pb2.PLACEMENT_MODE_PEER, peer_node_id=node.node_id
        )
    result = submit(node.stub, wasm.bytes("hello"), stdin=b"xy", placement=placement)
    assert result.outcome == Outcome.OUTCOME_SUCCESS
    assert result.stdout == b"yx"


@pytest.mark.parametrize(
    "placement",
    [
        capability_pb2.PlacementRequirements(arch="no-such-arch"),
        capability_pb2.PlacementRequirements(wasi_version="preview2"),
        capability_pb2.PlacementRequirements(min_memory_bytes=MAX_MEMORY + 1),
    ],
    ids=["arch", "wasi", "memory"],
)
def test_placement_requirements_not_met(
    node: Daemon, wasm: WasmModules, placement: capability_pb2.PlacementRequirements
) -> None:
    code, reason, _ = refused(node, make_request(wasm.bytes("hello"), placement=placement))
    assert (code, reason) == (SC.FAILED_PRECONDITION, "ERROR_REASON_PLACEMENT_UNAVAILABLE")


# -- receipts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "xyz", "AB" * 16, "ab" * 15, "ab" * 32])
def test_get_receipt_bad_id(node: Daemon, bad: str) -> None:
    code, reason, _ = rpc_error(
        lambda: node.stub.GetReceipt(service_pb2.GetReceiptRequest(job_id=bad), timeout=10)
    )
    assert (code, reason) == (SC.INVALID_ARGUMENT, "ERROR_REASON_INVALID_REQUEST")


def test_get_receipt_unknown_id(node: Daemon) -> None:
    code, reason, _ = rpc_error(
        lambda: node.stub.GetReceipt(service_pb2.GetReceiptRequest(job_id="0" * 32), timeout=10)
    )
    assert (code, reason) == (SC.NOT_FOUND, "ERROR_REASON_RECEIPT_NOT_FOUND")


def test_get_receipt_returns_the_signed_envelope(node: Daemon, hello_job: Any) -> None:
    result, _ = hello_job
    stored = node.stub.GetReceipt(
        service_pb2.GetReceiptRequest(job_id=result.job_id), timeout=10
    ).receipt
    assert stored.receipt == result.receipt
    assert stored.body == codec.decode_receipt_body(result.receipt.payload)
    assert stored.body.job_id == result.job_id


def list_all(node: Daemon, page_size: int) -> list[service_pb2.ListReceiptsResponse]:
    pages = []
    token = ""
    for _ in range(100):  # bounded
        page = node.stub.ListReceipts(
            service_pb2.ListReceiptsRequest(page_size=page_size, page_token=token), timeout=10
        )
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages
    pytest.fail("ListReceipts never returned an empty next_page_token")


def test_list_receipts_paging(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd()
    empty = node.stub.ListReceipts(service_pb2.ListReceiptsRequest(), timeout=10)
    assert list(empty.receipts) == []
    assert empty.next_page_token == ""

    module = wasm.bytes("hello")
    job_ids = []
    for i in range(7):
        result = submit(node.stub, module, stdin=f"job {i}".encode())
        assert result.outcome == Outcome.OUTCOME_SUCCESS
        job_ids.append(result.job_id)

    pages = list_all(node, 3)
    assert [len(p.receipts) for p in pages] == [3, 3, 1]
    assert [bool(p.next_page_token) for p in pages] == [True, True, False]
    listed = [r.body.job_id for p in pages for r in p.receipts]
    assert listed == job_ids[::-1], "newest first, no duplicates, none missing"
    finished = [r.body.finished_at.ToNanoseconds() for p in pages for r in p.receipts]
    assert finished == sorted(finished, reverse=True)
    for page in pages:
        for stored in page.receipts:
            env = codec.envelope_from_pb(stored.receipt)
            assert stored.body == codec.decode_receipt_body(env.payload)

    # Default page size holds all seven.
    whole = node.stub.ListReceipts(service_pb2.ListReceiptsRequest(), timeout=10)
    assert [r.body.job_id for r in whole.receipts] == job_ids[::-1]
    assert whole.next_page_token == ""

    # Keyset paging: a job finishing between pages does not shift the next page.
    first = node.stub.ListReceipts(service_pb2.ListReceiptsRequest(page_size=3), timeout=10)
    newer = submit(node.stub, module, stdin=b"late")
    rest = node.stub.ListReceipts(
        service_pb2.ListReceiptsRequest(page_size=10, page_token=first.next_page_token),
        timeout=10,
    )
    assert [r.body.job_id for r in rest.receipts] == job_ids[::-1][3:]
    assert newer.job_id not in [r.body.job_id for r in rest.receipts]
    assert node.node_info().receipts_stored == 8


@pytest.mark.parametrize(
    "token", ["garbage", "r1.", "r1.0", "r1.-3", "r1.abc", "r2.5", "r1." + "9" * 30]
)
def test_list_receipts_bad_page_token(node: Daemon, token: str) -> None:
    code, reason, _ = rpc_error(
        lambda: node.stub.ListReceipts(
            service_pb2.ListReceiptsRequest(page_size=3, page_token=token), timeout=10
        )
    )
    assert (code, reason) == (SC.INVALID_ARGUMENT, "ERROR_REASON_INVALID_PAGE_TOKEN")


# -- Verify -------------------------------------------------------------------------------------


def verify_rpc(node: Daemon, **kwargs: Any) -> service_pb2.VerifyResponse:
    return node.stub.Verify(service_pb2.VerifyRequest(**kwargs), timeout=10)


def checks(response: service_pb2.VerifyResponse) -> dict[str, bool]:
    return {c.name: c.passed for c in response.checks}


def test_verify_valid_receipt(node: Daemon, hello_job: Any) -> None:
    result, module = hello_job
    response = verify_rpc(
        node,
        receipt=result.receipt,
        expected_executor_node_id=node.node_id,
        stdout=result.stdout,
        stderr=result.stderr,
        module=module,
        input=make_request(args=("hello",), stdin=b"receipt me").manifest,
    )
    assert response.valid
    assert checks(response) == {
        "signature": True,
        "signer": True,
        "expected_executor": True,
        "stdout": True,
        "stderr": True,
        "module": True,
        "input": True,
    }
    assert response.signer_node_id == node.node_id
    assert response.body.job_id == result.job_id
    assert response.body.outcome == Outcome.OUTCOME_SUCCESS


def test_verify_minimal_request(node: Daemon, hello_job: Any) -> None:
    result, _ = hello_job
    response = verify_rpc(node, receipt=result.receipt)
    assert response.valid
    assert checks(response) == {"signature": True, "signer": True}


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_verify_tampered_payload(node: Daemon, hello_job: Any, where: str) -> None:
    result, _ = hello_job
    payload = bytearray(result.receipt.payload)
    index = {"first": 0, "middle": len(payload) // 2, "last": len(payload) - 1}[where]
    payload[index] ^= 0x01
    tampered = envelope_pb2.SignedEnvelope()
    tampered.CopyFrom(result.receipt)
    tampered.payload = bytes(payload)
    response = verify_rpc(node, receipt=tampered, stdout=result.stdout)
    assert not response.valid
    assert checks(response) == {"signature": False}
    assert not response.HasField("body"), "an unverified payload is never decoded"


def test_verify_tampered_signature(node: Daemon, hello_job: Any) -> None:
    result, _ = hello_job
    tampered = envelope_pb2.SignedEnvelope()
    tampered.CopyFrom(result.receipt)
    tampered.signature = bytes([tampered.signature[0] ^ 0x80]) + tampered.signature[1:]
    response = verify_rpc(node, receipt=tampered)
    assert not response.valid
    assert checks(response) == {"signature": False}


def test_verify_garbage_public_key(node: Daemon, hello_job: Any) -> None:
    result, _ = hello_job
    tampered = envelope_pb2.SignedEnvelope()
    tampered.CopyFrom(result.receipt)
    tampered.signer_public_key = b"short"
    response = verify_rpc(node, receipt=tampered)
    assert not response.valid
    assert checks(response) == {"signature": False}


def test_verify_wrong_stdout(node: Daemon, hello_job: Any) -> None:
    result, _ = hello_job
    response = verify_rpc(node, receipt=result.receipt, stdout=result.stdout + b"!")
    assert not response.valid
    assert checks(response) == {"signature": True, "signer": True, "stdout": False}
    # An empty stdout is a value to check, not "absent".
    response = verify_rpc(node, receipt=result.receipt, stdout=b"")
    assert not response.valid
    assert checks(response)["stdout"] is False


def test_verify_wrong_input(node: Daemon, hello_job: Any) -> None:
    result, _ = hello_job
    response = verify_rpc(
        node,
        receipt=result.receipt,
        input=make_request(args=("hello",), stdin=b"something else").manifest,
    )
    assert not response.valid
    assert checks(response)["input"] is False


def test_verify_expected_executor_mismatch(node: Daemon, hello_job: Any) -> None:
    result, _ = hello_job
    other = hashlib.sha256(b"someone else").hexdigest()
    response = verify_rpc(node, receipt=result.receipt, expected_executor_node_id=other)
    assert not response.valid
    assert checks(response) == {"signature": True, "signer": True, "expected_executor": False}
    assert response.signer_node_id == node.node_id


def test_verify_receipt_signed_by_another_key(node: Daemon, hello_job: Any) -> None:
    """A well-signed receipt whose signer is not the executor it names is not valid."""
    result, _ = hello_job
    impostor = NodeKey.from_seed(os.urandom(32))
    forged = envelopes.sign(impostor, envelopes.RECEIPT_DOMAIN, result.receipt.payload)
    response = verify_rpc(node, receipt=codec.envelope_to_pb(forged))
    assert not response.valid
    assert checks(response) == {"signature": True, "signer": False}
    assert response.signer_node_id == impostor.node_id


def test_verify_receipt_signed_under_another_domain(node: Daemon, hello_job: Any) -> None:
    result, _ = hello_job
    key = NodeKey.from_seed(os.urandom(32))
    other_domain = envelopes.sign(key, envelopes.DECLINE_DOMAIN, result.receipt.payload)
    response = verify_rpc(node, receipt=codec.envelope_to_pb(other_domain))
    assert not response.valid
    assert checks(response) == {"signature": False}


def test_verify_without_receipt(node: Daemon) -> None:
    code, reason, _ = rpc_error(lambda: verify_rpc(node))
    assert (code, reason) == (SC.INVALID_ARGUMENT, "ERROR_REASON_INVALID_REQUEST")


def test_verify_bad_expected_node_id(node: Daemon, hello_job: Any) -> None:
    result, _ = hello_job
    code, reason, _ = rpc_error(
        lambda: verify_rpc(node, receipt=result.receipt, expected_executor_node_id="nope")
    )
    assert (code, reason) == (SC.INVALID_ARGUMENT, "ERROR_REASON_INVALID_REQUEST")


# -- GetNodeInfo ----------------------------------------------------------------------------------


def test_get_node_info(node: Daemon) -> None:
    info = node.node_info()
    assert len(info.public_key) == 32
    assert info.node_id == hashlib.sha256(info.public_key).hexdigest()
    assert info.node_id == node.node_id
    assert info.version == __version__
    assert list(info.grpc_addresses) == node.addresses
    started = info.started_at.ToNanoseconds()
    assert 0 < time.time_ns() - started < 3600 * 10**9
    caps = info.capabilities
    assert caps.arch == platform.machine()
    assert caps.os == platform.system().lower()
    assert caps.cores == (os.cpu_count() or 1)
    assert caps.memory_bytes > 0
    assert caps.runtime_name == "wasmtime"
    assert caps.runtime_version == version("wasmtime")
    assert caps.wasi_version == "preview1"
    assert caps.total_job_slots == 2
    assert caps.max_limits.max_memory_bytes == MAX_MEMORY
    assert caps.max_limits.max_fuel == MAXIMUM_LIMITS.max_fuel
    assert caps.max_limits.timeout_ms == MAXIMUM_LIMITS.timeout_ms
    assert caps.max_limits.max_stdout_bytes == MAX_STDOUT
    assert caps.max_limits.max_stderr_bytes == MAX_STDERR
    # A runtime description that matches what receipts carry.
    ready = node.events("ready")[0]
    assert ready["job_slots"] == 2
    assert ready["runtime"] == f"wasmtime {version('wasmtime')}"


def test_node_info_counts_jobs(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd("[jobs]\nslots = 1\n")
    info = node.node_info()
    assert (info.jobs_running, info.jobs_queued, info.jobs_completed) == (0, 0, 0)
    assert info.receipts_stored == 0
    assert info.cached_modules == 0
    assert info.capabilities.free_job_slots == info.capabilities.total_job_slots == 1
    for _ in range(3):
        submit(node.stub, wasm.bytes("hello"), stdin=b"x")
    submit(node.stub, wasm.bytes("exit_3"))
    info = node.node_info()
    assert info.jobs_completed == 4
    assert info.receipts_stored == 4
    assert info.cached_modules == 2
    assert info.capabilities.free_job_slots == 1


# -- back-pressure and concurrency -----------------------------------------------------------------


def test_busy_when_slots_and_queue_are_full(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd("[jobs]\nslots = 1\nqueue = 1\n")
    module = wasm.bytes("infinite_loop")
    n = 4
    start = threading.Barrier(n, timeout=10)

    def one(_: int) -> Any:
        start.wait()
        try:
            return submit(node.stub, module, timeout_ms=1500, timeout=30)
        except grpc.RpcError as err:
            code, reason, _ = error_status(err)
            return code, reason

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        # While the admitted jobs run, the node reports no free slot.
        wait_until(lambda: node.node_info().jobs_running == 1, timeout=10, what="a running job")
        info = node.node_info()
        assert info.capabilities.free_job_slots == 0
        assert info.jobs_queued <= 1
        outcomes = [f.result(timeout=60) for f in futures]

    admitted = [o for o in outcomes if not isinstance(o, tuple)]
    busy = [o for o in outcomes if isinstance(o, tuple)]
    assert busy, "no request was refused as BUSY"
    for code, reason in busy:
        assert (code, reason) == (SC.RESOURCE_EXHAUSTED, "ERROR_REASON_BUSY")
    assert 1 <= len(admitted) <= 2  # one slot + one queue place
    for result in admitted:
        assert result.outcome == Outcome.OUTCOME_TIMEOUT, outcome_name(result.outcome)
    refusals = node.events("job_refused")
    assert any(e.get("reason") == "BUSY" for e in refusals)
    # Capacity is given back afterwards.
    info = node.node_info()
    assert (info.jobs_running, info.jobs_queued) == (0, 0)
    assert_serves(node, wasm)


def test_many_concurrent_submits(plasmd: DaemonFactory, wasm: WasmModules) -> None:
    node = plasmd("[jobs]\nslots = 2\n")
    module = wasm.bytes("hello")
    total, concurrency = 200, 32

    def one(i: int) -> Any:
        stdin = f"job-{i:03d}".encode()
        result = submit(node.stub, module, stdin=stdin, timeout=60)
        return i, stdin, result

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(total), timeout=120))

    job_ids = set()
    for _, stdin, result in results:
        assert result.outcome == Outcome.OUTCOME_SUCCESS, result.detail
        assert result.stdout == stdin[::-1]
        assert_receipt_matches(result, verify_result(result, stdin=stdin, node_id=node.node_id))
        job_ids.add(result.job_id)
    assert len(job_ids) == total, "job ids are distinct"

    info = node.node_info()
    assert info.jobs_completed == total
    assert info.receipts_stored == total
    assert (info.jobs_running, info.jobs_queued) == (0, 0)
    listed = node.stub.ListReceipts(service_pb2.ListReceiptsRequest(page_size=1000), timeout=30)
    listed_ids = [r.body.job_id for r in listed.receipts]
    assert len(listed_ids) == total
    assert set(listed_ids) == job_ids
    assert listed.next_page_token == ""


# -- client-chosen job ids ---------------------------------------------------------------------


def test_a_job_id_runs_at_most_once_even_when_submitted_twice_at_once(
    node: Daemon, wasm: WasmModules
) -> None:
    job_id = os.urandom(16).hex()
    request = make_request(wasm.bytes("primes"), args=("primes", "200000"))
    request.job_id = job_id
    barrier = threading.Barrier(4)

    def submit_once() -> str:
        barrier.wait(timeout=10)
        try:
            node.stub.Submit(request, timeout=60)
        except grpc.RpcError as err:
            return err.code().name
        return "OK"

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = sorted(pool.map(lambda _: submit_once(), range(4)))
    assert outcomes == ["INVALID_ARGUMENT"] * 3 + ["OK"], outcomes
    stored = node.stub.GetReceipt(service_pb2.GetReceiptRequest(job_id=job_id), timeout=10)
    assert stored.receipt.body.job_id == job_id
    finished = [r for r in node.events("job_finished") if r["job_id"] == job_id]
    assert len(finished) == 1


def test_a_bad_client_job_id_is_refused(node: Daemon, wasm: WasmModules) -> None:
    request = make_request(wasm.bytes("hello"))
    request.job_id = "not-hex"
    code, reason, _ = refused(node, request)
    assert (code, reason) == (SC.INVALID_ARGUMENT, "ERROR_REASON_INVALID_REQUEST")
