"""The PHP client (clients/php) against a real plasmd, and the shared receipt vectors in PHP.

* PHPUnit's offline suite: the receipt vectors (tests/vectors/receipts.json),
  framing, targets, the retry policy over a scripted transport, daemon down
  (a closed port, a missing Unix socket). No daemon.
* PHPUnit's daemon suite against one plasmd serving TCP and a Unix socket:
  submit + offline verify, the Verify RPC, a tampered receipt, error mapping,
  a repeated job id, watch and cancel, deadline exceeded, the Unix socket.
* clients/php/examples/remote_test.php over TCP and the Unix socket: it prints
  the output and every offline check, rejects a tampered copy, and exits
  non-zero when a check fails.
* An https:// target, against a TLS gRPC server with a throwaway CA.

PHPUnit runs with --fail-on-skipped, so a daemon test that cannot run fails
here instead of vanishing. php and phpunit come from scripts/install-deps.sh.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from client_harness import (
    assert_example_ran_on_the_peer,
    client_env,
    requester_and_worker,
    require_tool,
    run_client,
    unix_target,
)
from conftest import Daemon, DaemonFactory, WasmModules
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from plasm.v1 import service_pb2

REPO = Path(__file__).resolve().parent.parent
PHP_CLIENT = REPO / "clients" / "php"
PHPUNIT_XML = PHP_CLIENT / "phpunit.xml"
EXAMPLE = PHP_CLIENT / "examples" / "remote_test.php"
VECTORS = REPO / "tests" / "vectors" / "receipts.json"
TIMEOUT_S = 120
CHECKS = ("signature", "signer", "expected_executor", "stdout", "stderr", "module", "input")


def tool(name: str) -> str:
    return require_tool(name, "Debian packages php-cli, php-curl, php-google-protobuf, phpunit")


def run(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_client(args, env, cwd=REPO, timeout_s=TIMEOUT_S)


php_env = client_env


def phpunit(env: dict[str, str], *args: str) -> int:
    """Run PHPUnit on clients/php; fail with its output unless it passes. Returns the test count."""
    proc = run(
        [
            tool("php"),
            tool("phpunit"),
            "-c",
            str(PHPUNIT_XML),
            "--fail-on-skipped",
            "--fail-on-incomplete",
            "--verbose",
            *args,
        ],
        env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"phpunit {' '.join(args)} failed ({proc.returncode}):\n{output}"
    match = re.search(r"^OK \((\d+) tests?, \d+ assertions?\)$", proc.stdout, re.M)
    assert match, f"phpunit did not report OK:\n{output}"
    return int(match.group(1))


@pytest.fixture(scope="module")
def node(plasmd_module: DaemonFactory) -> Daemon:
    """One plasmd serving gRPC on TCP and on a Unix socket, shared by these tests."""
    return plasmd_module(unix_socket=True)


def test_php_receipt_vectors() -> None:
    """The shared vectors through the PHP verifier, with no daemon: every case ran."""
    cases = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]
    valid = sum(1 for case in cases if case["expected_valid"])
    ran = phpunit(php_env(), "--testsuite", "offline", "--filter", "VectorsTest")
    assert ran >= len(cases) + 2 * valid, f"only {ran} PHP vector tests for {len(cases)} cases"


def test_php_offline_suite() -> None:
    """No daemon: framing, targets, status mapping, retries, daemon down, the input encoding."""
    phpunit(php_env(), "--testsuite", "offline")


def test_phpunit_against_live_daemon(node: Daemon, wasm: WasmModules) -> None:
    env = php_env(
        PLASM_ADDR=node.addr,
        PLASM_UNIX=unix_target(node),
        PLASM_HELLO_WASM=str(wasm.path("hello")),
        PLASM_LOOP_WASM=str(wasm.path("infinite_loop")),
    )
    phpunit(env, "--testsuite", "daemon")
    # The daemon is still healthy after the deadline, tamper and daemon-down tests.
    assert node.running
    assert node.health_status() == "SERVING"


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_remote_test_example(node: Daemon, wasm: WasmModules, transport: str) -> None:
    target = node.addr if transport == "tcp" else unix_target(node)
    proc = run(
        [tool("php"), str(EXAMPLE), str(wasm.path("hello"))],
        php_env(PLASM_ADDR=target, PLASM_EXPECT_EXECUTOR=node.node_id),
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert 'stdout     "dlroW ,olleH"' in out
    for check in CHECKS:
        assert re.search(rf"^  {check} +ok ", out, re.M), f"check {check} not shown as ok:\n{out}"
    assert f"executor   {node.node_id} (the node we asked)" in out
    assert "receipt    VALID" in out
    assert re.search(r"^  signature +FAIL ", out, re.M), out
    assert "tampered   REJECTED" in out
    assert out.rstrip().endswith("remote_test: OK")


def test_remote_test_example_fails_loudly(node: Daemon, wasm: WasmModules) -> None:
    """An unexpected executor fails the run; so does a node that is not there."""
    wrong = run(
        [tool("php"), str(EXAMPLE), str(wasm.path("hello"))],
        php_env(PLASM_ADDR=node.addr, PLASM_EXPECT_EXECUTOR="0" * 64),
    )
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert re.search(r"^  expected_executor +FAIL ", wrong.stdout, re.M), wrong.stdout
    assert "receipt    INVALID" in wrong.stdout
    assert "remote_test: FAILED" in wrong.stdout

    down = run(
        [tool("php"), str(EXAMPLE), str(wasm.path("hello"))], php_env(PLASM_ADDR="127.0.0.1:1")
    )
    assert down.returncode == 1, down.stdout + down.stderr
    assert "UNAVAILABLE" in down.stderr


# -- https targets -------------------------------------------------------------------------
# plasmd serves cleartext on loopback and its Unix socket; a node behind a TLS
# terminator is reached as https://host:port. A TLS gRPC server with a
# throwaway CA stands in for one here.


def _self_signed(tmp: Path) -> tuple[bytes, bytes, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plasm test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ca_file = tmp / "ca.pem"
    ca_file.write_bytes(cert_pem)
    return cert_pem, key_pem, ca_file


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS gRPC server answering GetNodeInfo with node id "tls"; yields (target, CA file)."""
    cert_pem, key_pem, ca_file = _self_signed(tmp_path)

    def node_info(
        request: service_pb2.GetNodeInfoRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetNodeInfoResponse:
        return service_pb2.GetNodeInfoResponse(node_id="tls", version="test")

    handler = grpc.method_handlers_generic_handler(
        "plasm.v1.PlasmService",
        {
            "GetNodeInfo": grpc.unary_unary_rpc_method_handler(
                node_info,
                request_deserializer=service_pb2.GetNodeInfoRequest.FromString,
                response_serializer=service_pb2.GetNodeInfoResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    server.start()
    try:
        yield f"https://127.0.0.1:{port}", ca_file
    finally:
        server.stop(grace=None)


HTTPS_SCRIPT = r"""
require 'clients/php/autoload.php';
[$_, $target, $ca] = $argv;
$trusted = new Plasm\Client($target, ['ca_file' => $ca, 'retries' => 0]);
echo 'node ', $trusted->nodeInfo()->getNodeId(), "\n";
echo 'again ', $trusted->nodeInfo()->getNodeId(), "\n";
try {
    (new Plasm\Client($target, ['retries' => 0]))->nodeInfo();
    echo "untrusted: accepted\n";
} catch (Plasm\Exception\ConnectionException $e) {
    echo 'untrusted: refused, sent=', var_export($e->requestSent(), true), "\n";
}
"""


def test_https_target(tls_server: tuple[str, Path]) -> None:
    """https:// negotiates h2 over TLS, checks the certificate against ca_file, reuses it."""
    target, ca_file = tls_server
    proc = run([tool("php"), "-r", HTTPS_SCRIPT, target, str(ca_file)], php_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "node tls",
        "again tls",
        "untrusted: refused, sent=false",
    ], proc.stdout + proc.stderr


def test_remote_test_example_on_a_peer(plasmd_module: DaemonFactory, wasm: WasmModules) -> None:
    """Two nodes: the job submitted to A runs on B; PHP checks B's receipt without asking anyone."""
    a, b = requester_and_worker(plasmd_module)
    proc = run(
        [tool("php"), str(EXAMPLE), str(wasm.path("hello"))],
        php_env(PLASM_ADDR=a.addr, PLASM_EXPECT_EXECUTOR=b.node_id),
    )
    assert_example_ran_on_the_peer(proc, a, b)
