"""`plasm`: talk to a Plasm node and verify receipts.

Tables for people; `--json` for scripts. A job's stdout goes to stdout
untouched so it can be piped; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from plasm.v1 import (
    capability_pb2,
    envelope_pb2,
    manifest_pb2,
    receipt_pb2,
    service_pb2,
    service_pb2_grpc,
)
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from plasm_grpc import __version__
from plasm_grpc.api import codec
from plasm_grpc.api.verify import ReceiptInput, VerifyResult, verify_receipt
from plasm_grpc.core.ids import sha256_hex

DEFAULT_ADDR = "127.0.0.1:50151"
EXIT_USAGE = 2
EXIT_RPC = 1
EXIT_JOB_FAILED = 3
EXIT_UNVERIFIED = 4

err_console = Console(stderr=True, highlight=False)


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_RPC) -> None:
        super().__init__(message)
        self.code = code


def die(message: str, code: int = EXIT_RPC) -> NoReturn:
    raise CliError(message, code)


# -- connection --------------------------------------------------------------


@dataclass(slots=True)
class Client:
    addr: str
    timeout: float
    channel: grpc.Channel
    stub: service_pb2_grpc.PlasmServiceStub

    def call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            die(describe_rpc_error(err, self.addr))


def describe_rpc_error(err: grpc.RpcError, addr: str) -> str:
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    reason = ""
    if isinstance(err, grpc.Call):
        for key, value in err.trailing_metadata() or ():
            if key == codec.REASON_KEY:
                reason = str(value)
    if code == grpc.StatusCode.UNAVAILABLE and reason == "ERROR_REASON_SHUTTING_DOWN":
        return f"plasmd at {addr} is shutting down and not accepting jobs: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"cannot reach plasmd at {addr}: {details}\n"
            "Is the daemon running? Start it with `plasmd`, or point at it with --addr "
            "or $PLASM_ADDR."
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"plasmd at {addr} did not answer in time (raise --timeout)"
    name = code.name if code is not None else "ERROR"
    tag = f" [{reason}]" if reason else ""
    return f"plasmd refused the request: {name}{tag}: {details}"


def connect(args: argparse.Namespace) -> Client:
    addr: str = args.addr
    max_bytes = 64 * 1024 * 1024
    channel = grpc.insecure_channel(
        addr,
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
        ],
    )
    return Client(addr, args.timeout, channel, service_pb2_grpc.PlasmServiceStub(channel))


# -- helpers -------------------------------------------------------------------


def read_file(path: str, what: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        die(f"{what} {path} does not exist", EXIT_USAGE)
    except OSError as err:
        die(f"cannot read {what} {path}: {err.strerror}", EXIT_USAGE)


def load_manifest(path: str) -> manifest_pb2.JobManifest:
    """Parse a JSON manifest, validating it against schemas/job_manifest.schema.json."""
    import jsonschema

    raw = read_file(path, "manifest")
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        die(f"manifest {path} is not valid JSON: {err}", EXIT_USAGE)
    schema = json.loads(
        (files("plasm_grpc.schemas") / "job_manifest.schema.json").read_text("utf-8")
    )
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
            lines.append(f"  at {where}: {e.message}")
        die(
            f"manifest {path} does not match the JobManifest schema:\n" + "\n".join(lines),
            EXIT_USAGE,
        )
    manifest = manifest_pb2.JobManifest()
    try:
        json_format.ParseDict(document, manifest)
    except json_format.ParseError as err:
        die(f"manifest {path}: {err}", EXIT_USAGE)
    return manifest


def parse_env(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            die(f"--env expects NAME=VALUE, got {pair!r}", EXIT_USAGE)
        out.append((name, value))
    return out


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def envelope_json(env: envelope_pb2.SignedEnvelope) -> dict[str, Any]:
    return json_format.MessageToDict(env)


def body_json(body: receipt_pb2.ReceiptBody) -> dict[str, Any]:
    return json_format.MessageToDict(body, always_print_fields_with_no_presence=True)


def verification_json(result: VerifyResult) -> dict[str, Any]:
    return {
        "valid": result.valid,
        "signerNodeId": result.signer_node_id,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in result.checks],
    }


_HEX64 = re.compile(r"\b([0-9a-f]{16})[0-9a-f]{48}\b")


def short(text: str) -> str:
    """Shorten 64-hex hashes and ids for tables; --json keeps them whole."""
    return _HEX64.sub(r"\1…", text)


def show_verification(result: VerifyResult) -> None:
    table = Table(title="receipt verification", show_header=True, title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for c in result.checks:
        # Receipt and server text is data, never markup (a signed "detail" could
        # otherwise restyle or hide what the verifier shows).
        table.add_row(
            Text(c.name), "[green]ok[/]" if c.passed else "[red]FAILED[/]", Text(short(c.detail))
        )
    err_console.print(table)
    if result.valid:
        err_console.print(
            f"[green]receipt verified[/]: signed by node {escape(result.signer_node_id)}"
        )
    else:
        err_console.print("[red]receipt NOT verified[/]")


def show_body(body: receipt_pb2.ReceiptBody, title: str = "receipt") -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    outcome = receipt_pb2.Outcome.Name(body.outcome).removeprefix("OUTCOME_").lower()
    rows = [
        ("job id", body.job_id),
        ("outcome", outcome + (f" ({body.detail})" if body.detail else "")),
        ("exit code", str(body.exit_code)),
        ("trap", body.trap_code or "-"),
        ("fuel", f"{body.fuel_consumed:,} of {body.limits.max_fuel:,}"),
        ("wall time", f"{body.wall_time_us / 1000:.3f} ms"),
        ("module sha256", body.module_sha256),
        ("input sha256", body.input_sha256),
        ("stdout", f"{body.stdout_bytes} bytes, sha256 {body.stdout_sha256}"),
        ("stderr", f"{body.stderr_bytes} bytes, sha256 {body.stderr_sha256}"),
        ("executor", body.executor_node_id),
        ("runtime", f"{body.runtime.name} {body.runtime.version} ({body.runtime.wasi_version})"),
        ("finished", body.finished_at.ToJsonString()),
    ]
    for k, v in rows:
        table.add_row(k, Text(short(v)))
    err_console.print(table)


# -- commands --------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest) if args.manifest else manifest_pb2.JobManifest()
    module = read_file(args.module, "module") if args.module else b""
    if not module and not manifest.module_sha256:
        die("give a module file, or a manifest with module_sha256", EXIT_USAGE)
    if args.stdin is not None and args.stdin_file is not None:
        die("use --stdin or --stdin-file, not both", EXIT_USAGE)
    if args.stdin is not None:
        manifest.stdin = args.stdin.encode()
    elif args.stdin_file is not None:
        manifest.stdin = read_file(args.stdin_file, "stdin file")
    if not manifest.args and (args.args or module):
        # argv[0] is the module's name, as a shell would give it.
        manifest.args.append(Path(args.module).name if args.module else "module.wasm")
    manifest.args.extend(args.args)
    for name, value in parse_env(args.env):
        manifest.env.append(manifest_pb2.EnvVar(name=name, value=value))
    lim = manifest.limits
    for flag, field in (
        ("memory", "max_memory_bytes"),
        ("fuel", "max_fuel"),
        ("timeout_ms", "timeout_ms"),
        ("max_stdout", "max_stdout_bytes"),
        ("max_stderr", "max_stderr_bytes"),
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(lim, field, value)
    if args.local:
        manifest.placement.mode = capability_pb2.PLACEMENT_MODE_LOCAL
    if module and manifest.module_sha256 and manifest.module_sha256 != sha256_hex(module):
        die(f"{args.module} does not hash to the manifest's module_sha256", EXIT_USAGE)

    client = connect(args)
    request = service_pb2.SubmitRequest(manifest=manifest, module=module)
    if err_console.is_terminal and not args.quiet and not args.json:
        with err_console.status(
            f"running {args.module or manifest.module_sha256[:16]} on {args.addr}…"
        ):
            response: service_pb2.SubmitResponse = client.call("Submit", request)
    else:
        response = client.call("Submit", request)
    result = response.result
    verification = verify_receipt(
        codec.envelope_from_pb(result.receipt),
        expected_executor_node_id=args.expect_node or None,
        stdout=result.stdout,
        stderr=result.stderr,
        module=module or None,
        job_input=ReceiptInput(
            args=tuple(manifest.args), env=codec.env_pairs(manifest), stdin=manifest.stdin
        ),
    )
    if args.receipt_out:
        Path(args.receipt_out).write_text(
            json_format.MessageToJson(result.receipt, indent=2) + "\n", "utf-8"
        )
    outcome = receipt_pb2.Outcome.Name(result.outcome).removeprefix("OUTCOME_").lower()
    if args.json:
        print_json(
            {
                "jobId": result.job_id,
                "outcome": outcome,
                "exitCode": result.exit_code,
                "trapCode": result.trap_code,
                "detail": result.detail,
                "stdout": result.stdout.decode("utf-8", "replace"),
                "stderr": result.stderr.decode("utf-8", "replace"),
                "receipt": envelope_json(result.receipt),
                "receiptBody": body_json(verification.body) if verification.body else None,
                "verification": verification_json(verification),
            }
        )
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        if result.stderr:
            sys.stderr.buffer.write(result.stderr)
            sys.stderr.flush()
        if not args.quiet:
            if result.stdout and not result.stdout.endswith(b"\n"):
                err_console.print()  # keep stdout byte-exact; separate on stderr
            if verification.body is not None:
                show_body(verification.body)
            show_verification(verification)
            if args.receipt_out:
                err_console.print(f"receipt written to {escape(args.receipt_out)}")
    if not verification.valid:
        return EXIT_UNVERIFIED
    if result.outcome == receipt_pb2.OUTCOME_SUCCESS:
        return 0
    if result.outcome == receipt_pb2.OUTCOME_NONZERO_EXIT:
        return min(max(result.exit_code, 1), 255)
    if not args.json:
        err_console.print(f"[red]job ended: {outcome}[/] {escape(result.detail)}")
    return EXIT_JOB_FAILED


def load_envelope(path: str) -> envelope_pb2.SignedEnvelope:
    """A receipt file: proto3 JSON of a SignedEnvelope or StoredReceipt, or binary."""
    raw = read_file(path, "receipt")
    env = envelope_pb2.SignedEnvelope()
    stripped = raw.lstrip()
    if stripped.startswith(b"{"):
        try:
            document = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            die(f"receipt {path} is not valid JSON: {err}", EXIT_USAGE)
        if isinstance(document, dict) and "receipt" in document:
            document = document["receipt"]
        try:
            json_format.ParseDict(document, env, ignore_unknown_fields=False)
        except json_format.ParseError as err:
            die(f"receipt {path} is not a SignedEnvelope: {err}", EXIT_USAGE)
    else:
        try:
            env.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - protobuf raises several types here
            die(f"receipt {path} is neither JSON nor a binary SignedEnvelope", EXIT_USAGE)
    return env


def cmd_verify(args: argparse.Namespace) -> int:
    if args.job_id:
        client = connect(args)
        stored = client.call("GetReceipt", service_pb2.GetReceiptRequest(job_id=args.job_id))
        env = stored.receipt.receipt
    elif args.receipt:
        env = load_envelope(args.receipt)
    else:
        die("give a receipt file or --job-id", EXIT_USAGE)
    job_input = None
    if args.stdin_text is not None or args.input_args or args.input_env:
        job_input = ReceiptInput(
            args=tuple(args.input_args),
            env=tuple(parse_env(args.input_env)),
            stdin=(args.stdin_text or "").encode(),
        )
    if args.daemon:
        client = connect(args)
        request = service_pb2.VerifyRequest(
            receipt=env, expected_executor_node_id=args.expect_node or ""
        )
        if args.stdout_file:
            request.stdout = read_file(args.stdout_file, "stdout file")
        if args.stderr_file:
            request.stderr = read_file(args.stderr_file, "stderr file")
        if args.module:
            request.module = read_file(args.module, "module")
        if job_input is not None:
            request.input.args.extend(job_input.args)
            request.input.env.extend(manifest_pb2.EnvVar(name=k, value=v) for k, v in job_input.env)
            request.input.stdin = job_input.stdin
        response: service_pb2.VerifyResponse = client.call("Verify", request)
        if args.json:
            print_json(json_format.MessageToDict(response))
        else:
            for c in response.checks:
                mark = "[green]ok[/]" if c.passed else "[red]FAILED[/]"
                err_console.print(f"{mark} {escape(c.name)}: {escape(c.detail)}")
            err_console.print("[green]valid[/]" if response.valid else "[red]NOT valid[/]")
        return 0 if response.valid else EXIT_UNVERIFIED
    result = verify_receipt(
        codec.envelope_from_pb(env),
        expected_executor_node_id=args.expect_node or None,
        stdout=read_file(args.stdout_file, "stdout file") if args.stdout_file else None,
        stderr=read_file(args.stderr_file, "stderr file") if args.stderr_file else None,
        module=read_file(args.module, "module") if args.module else None,
        job_input=job_input,
    )
    if args.json:
        out = verification_json(result)
        out["receiptBody"] = body_json(result.body) if result.body else None
        print_json(out)
    else:
        if result.body is not None:
            show_body(result.body)
        show_verification(result)
    return 0 if result.valid else EXIT_UNVERIFIED


def cmd_info(args: argparse.Namespace) -> int:
    client = connect(args)
    info: service_pb2.GetNodeInfoResponse = client.call(
        "GetNodeInfo", service_pb2.GetNodeInfoRequest()
    )
    if args.json:
        print_json(json_format.MessageToDict(info, always_print_fields_with_no_presence=True))
        return 0
    caps = info.capabilities
    table = Table(
        title=f"plasmd {info.version} at {args.addr}", show_header=False, title_justify="left"
    )
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in (
        ("node id", info.node_id),
        ("listening", ", ".join(info.grpc_addresses)),
        ("started", info.started_at.ToJsonString()),
        (
            "platform",
            f"{caps.arch} {caps.os}, {caps.cores} cores, {caps.memory_bytes / 2**30:.1f} GiB",
        ),
        ("runtime", f"{caps.runtime_name} {caps.runtime_version} ({caps.wasi_version})"),
        ("job slots", f"{caps.free_job_slots} free of {caps.total_job_slots}"),
        (
            "jobs",
            f"{info.jobs_running} running, {info.jobs_queued} queued, "
            f"{info.jobs_completed} completed since start",
        ),
        ("overlay", info.overlay_address or "off"),
        ("peers", str(len(info.peers))),
        ("receipts stored", str(info.receipts_stored)),
        ("modules cached", str(info.cached_modules)),
        ("max memory", f"{caps.max_limits.max_memory_bytes / 2**20:.0f} MiB per job"),
        ("max time", f"{caps.max_limits.timeout_ms / 1000:g} s per job"),
    ):
        table.add_row(k, Text(v))
    Console(highlight=False).print(table)
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    client = connect(args)
    if args.connections:
        return _show_connections(client, args)
    response: service_pb2.ListPeersResponse = client.call(
        "ListPeers", service_pb2.ListPeersRequest()
    )
    if args.json:
        print_json(
            {
                "peers": [
                    json_format.MessageToDict(p, always_print_fields_with_no_presence=True)
                    for p in response.peers
                ]
            }
        )
        return 0
    _peer_table("DHT routing table (nearest first)", response.peers)
    if not response.peers:
        err_console.print("no peers known yet (add overlay.bootstrap peers, or wait for them)")
    return 0


def _show_connections(client: Client, args: argparse.Namespace) -> int:
    info: service_pb2.GetNodeInfoResponse = client.call(
        "GetNodeInfo", service_pb2.GetNodeInfoRequest()
    )
    if args.json:
        print_json(
            {
                "overlayAddress": info.overlay_address,
                "peers": [json_format.MessageToDict(p) for p in info.peers],
            }
        )
        return 0
    title = f"overlay connections of {info.node_id[:16]}… ({info.overlay_address or 'overlay off'})"
    table = Table(title=title, title_justify="left")
    for col in ("node id", "address", "direction", "rtt ms"):
        table.add_column(col)
    for p in info.peers:
        rtt = f"{p.rtt_us / 1000:.2f}" if p.rtt_us else "-"
        table.add_row(Text(p.node_id), Text(p.address), Text(p.direction), rtt)
    Console(highlight=False).print(table)
    if not info.peers:
        err_console.print("no open overlay connections (add overlay.bootstrap peers)")
    return 0


def _peer_table(title: str, peers: Any) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("node id", "address", "rtt ms", "arch", "runtime", "max memory", "slots free"):
        table.add_column(col)
    for p in peers:
        rtt = f"{p.rtt_us / 1000:.2f}" if p.connected and p.rtt_us else "-"
        if p.HasField("record_content"):
            caps = p.record_content.capabilities
            arch = caps.arch
            runtime = f"{caps.runtime_name} {caps.runtime_version} ({caps.wasi_version})"
            memory = f"{caps.max_limits.max_memory_bytes / 2**20:.0f} MiB"
            slots = f"{caps.free_job_slots}/{caps.total_job_slots}"
        else:
            arch = runtime = memory = slots = "?"
        table.add_row(
            Text(short(p.node_id)),
            Text(p.address),
            rtt,
            Text(arch),
            Text(runtime),
            memory,
            slots,
        )
    Console(highlight=False).print(table)


def cmd_peer(args: argparse.Namespace) -> int:
    client = connect(args)
    response: service_pb2.FindPeerResponse = client.call(
        "FindPeer", service_pb2.FindPeerRequest(node_id=args.node_id)
    )
    if args.json:
        print_json(json_format.MessageToDict(response, always_print_fields_with_no_presence=True))
        return 0
    _peer_table(
        f"found in {response.duration_us / 1000:.1f} ms, {response.hops} hops, "
        f"{response.rpcs} RPCs",
        [response.peer],
    )
    record = response.peer.record_content
    err_console.print(
        f"record seq {record.seq}, expires {record.expires_at.ToJsonString()}, "
        f"addresses {', '.join(record.addresses) or '-'}",
        markup=False,
    )
    return 0


def cmd_devnet(args: argparse.Namespace) -> int:
    import shutil
    import signal
    import tempfile
    import threading

    from plasm_grpc.cli.devnet import DevNet, DevnetError

    if not 1 <= args.nodes <= 200:
        die("--nodes must be between 1 and 200", EXIT_USAGE)
    keep = args.dir is not None
    root = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="plasm-devnet-"))
    net = DevNet(root)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        err_console.print(f"starting {args.nodes} plasmd on loopback under {root} …", markup=False)
        try:
            net.start(args.nodes)
        except DevnetError as err:
            die(str(err))
        table = Table(
            title=f"devnet: {args.nodes} nodes (node 0 is the seed)", title_justify="left"
        )
        for col in ("node", "node id", "gRPC", "overlay (udp)"):
            table.add_column(col)
        for n in net.nodes:
            table.add_row(str(n.index), Text(short(n.node_id)), Text(n.grpc), Text(n.overlay))
        Console(highlight=False).print(table)
        err_console.print(
            f"addresses in {root / 'devnet.json'}, logs in {root}/node*/plasmd.log\n"
            f"try: plasm --addr {net.nodes[0].grpc} peers\n"
            "Ctrl-C stops every node.",
            markup=False,
        )
        if args.once:
            stop.set()
        while not stop.wait(0.5):
            dead = [n for n in net.nodes if n.process.poll() is not None]
            if dead:
                err_console.print(
                    f"node {dead[0].index} exited with {dead[0].process.returncode} "
                    f"(see {dead[0].log}); stopping the devnet",
                    markup=False,
                )
                net.stop()
                return EXIT_RPC
        err_console.print("stopping …", markup=False)
        codes = net.stop()
        bad = [i for i, code in enumerate(codes) if code != 0]
        if bad:
            err_console.print(f"nodes {bad} did not stop cleanly", markup=False)
            return EXIT_RPC
        err_console.print(f"stopped {len(codes)} nodes", markup=False)
        return 0
    finally:
        net.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def cmd_workers(args: argparse.Namespace) -> int:
    client = connect(args)
    response: service_pb2.FindWorkersResponse = client.call(
        "FindWorkers",
        service_pb2.FindWorkersRequest(
            wasi_version=args.wasi or "",
            min_memory_bytes=args.memory,
            arch=args.arch or "",
            min_free_slots=args.min_free_slots,
            limit=args.limit,
        ),
    )
    if args.json:
        print_json(
            {
                "capabilityClass": response.capability_class,
                "workers": [
                    json_format.MessageToDict(p, always_print_fields_with_no_presence=True)
                    for p in response.workers
                ],
            }
        )
        return 0
    _peer_table(f"workers for {response.capability_class} (best first)", response.workers)
    if not response.workers:
        err_console.print("no worker meets these requirements (none found through the DHT)")
    return 0


def cmd_receipts(args: argparse.Namespace) -> int:
    client = connect(args)
    response: service_pb2.ListReceiptsResponse = client.call(
        "ListReceipts",
        service_pb2.ListReceiptsRequest(page_size=args.limit, page_token=args.page_token or ""),
    )
    if args.json:
        print_json(json_format.MessageToDict(response))
        return 0
    table = Table(title="receipts (newest first)", title_justify="left")
    for col in ("job id", "finished", "outcome", "exit", "wall ms", "module"):
        table.add_column(col)
    for stored in response.receipts:
        b = stored.body
        table.add_row(
            Text(b.job_id),
            b.finished_at.ToJsonString(),
            receipt_pb2.Outcome.Name(b.outcome).removeprefix("OUTCOME_").lower(),
            str(b.exit_code),
            f"{b.wall_time_us / 1000:.2f}",
            Text(b.module_sha256[:16] + "…"),
        )
    Console(highlight=False).print(table)
    if response.next_page_token:
        err_console.print(f"more: plasm receipts --page-token {escape(response.next_page_token)}")
    return 0


def cmd_receipt(args: argparse.Namespace) -> int:
    client = connect(args)
    response: service_pb2.GetReceiptResponse = client.call(
        "GetReceipt", service_pb2.GetReceiptRequest(job_id=args.job_id)
    )
    env = response.receipt.receipt
    if args.out:
        Path(args.out).write_text(json_format.MessageToJson(env, indent=2) + "\n", "utf-8")
        err_console.print(f"receipt written to {escape(args.out)}")
    if args.json:
        print_json({"receipt": envelope_json(env), "body": body_json(response.receipt.body)})
    else:
        show_body(response.receipt.body)
    return 0


# -- argument parsing ----------------------------------------------------------------


def _nonneg(value: str) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {value!r}"
        ) from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value!r}")
    return n


_SIZE_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}


def _size(value: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size like 536870912, 512MiB or 1GiB, got {value!r}"
        )
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plasm",
        description="Run WebAssembly jobs on a Plasm node and verify their signed receipts.",
        epilog="exit codes: 0 ok; 1 daemon error; 2 usage; 3 job did not succeed; "
        "4 receipt failed verification; for a job that exits non-zero, its exit code.",
    )
    p.add_argument(
        "--addr",
        default=os.environ.get("PLASM_ADDR", DEFAULT_ADDR),
        help="plasmd gRPC address: host:port or unix:/path "
        f"(default $PLASM_ADDR or {DEFAULT_ADDR})",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="RPC deadline in seconds")
    p.add_argument("--version", action="version", version=f"plasm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "submit",
        help="run a WASI module and verify its receipt",
        description="Submit a WASI module to the node, print its stdout, and "
        "verify the signed receipt against what was sent and received.",
    )
    s.add_argument("module", nargs="?", help="the .wasm file ('-' for standard input)")
    s.add_argument("--manifest", help="JSON JobManifest (validated against its JSON Schema)")
    s.add_argument("--stdin", help="text given to the guest on stdin")
    s.add_argument("--stdin-file", help="file given to the guest on stdin ('-' for ours)")
    s.add_argument(
        "--arg",
        dest="args",
        action="append",
        default=[],
        help="argument for the guest (repeatable); argv[0] is the module name",
    )
    s.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the guest (repeatable); none are inherited",
    )
    s.add_argument("--memory", type=_nonneg, help="max linear memory in bytes")
    s.add_argument("--fuel", type=_nonneg, help="fuel budget (about one unit per instruction)")
    s.add_argument("--timeout-ms", type=_nonneg, help="wall-time budget in milliseconds")
    s.add_argument("--max-stdout", type=_nonneg, help="stdout cap in bytes")
    s.add_argument("--max-stderr", type=_nonneg, help="stderr cap in bytes")
    s.add_argument("--local", action="store_true", help="require running on this node")
    s.add_argument("--expect-node", help="fail verification unless this node id signed")
    s.add_argument("--receipt-out", help="write the receipt (SignedEnvelope JSON) here")
    s.add_argument("--quiet", "-q", action="store_true", help="print only the job's output")
    s.add_argument("--json", action="store_true", help="one JSON object for scripts")
    s.set_defaults(func=cmd_submit)

    v = sub.add_parser(
        "verify",
        help="verify a receipt offline (or via the daemon)",
        description="Check a receipt's Ed25519 signature under the receipt "
        "domain, that its signer is its executor, and optionally "
        "that output, module and input match its hashes. Offline "
        "unless --daemon or --job-id is given.",
    )
    v.add_argument("receipt", nargs="?", help="receipt file (JSON or binary SignedEnvelope)")
    v.add_argument("--job-id", help="fetch this job's receipt from the node, verify offline")
    v.add_argument("--stdout-file", help="check this file against the receipt's stdout hash")
    v.add_argument("--stderr-file", help="check this file against the receipt's stderr hash")
    v.add_argument("--module", help="check this module file against the receipt's module hash")
    v.add_argument("--stdin-text", help="input check: the stdin text that was sent")
    v.add_argument(
        "--input-arg",
        dest="input_args",
        action="append",
        default=[],
        help="input check: an argument that was sent, argv[0] included (repeatable)",
    )
    v.add_argument(
        "--input-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="input check: an env var that was sent (repeatable)",
    )
    v.add_argument("--expect-node", help="require this signer node id")
    v.add_argument("--daemon", action="store_true", help="ask the node's Verify RPC instead")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    i = sub.add_parser("info", help="node id, capabilities and state")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    pe = sub.add_parser(
        "peers",
        help="peers in the node's DHT routing table, with their capabilities",
        description="List the peers this node's DHT knows (nearest first): address, "
        "round-trip time when connected, and what their signed peer records say "
        "they can run ('?' until a record is known).",
    )
    pe.add_argument(
        "--connections", action="store_true", help="show open overlay connections instead"
    )
    pe.add_argument("--json", action="store_true")
    pe.set_defaults(func=cmd_peers)

    pf = sub.add_parser(
        "peer",
        help="look one node up by id through the DHT",
        description="Find NODE_ID's signed peer record through the DHT and show "
        "its addresses and capabilities, with the lookup's hops, RPCs and time.",
    )
    pf.add_argument("node_id", help="64 lowercase hex")
    pf.add_argument("--json", action="store_true")
    pf.set_defaults(func=cmd_peer)

    w = sub.add_parser(
        "workers",
        help="find workers that can run a job, through the DHT",
        description="Look up the DHT's capability provider key for the job's WASI "
        "version and memory, and list the workers whose signed records meet every "
        "requirement, best first (most free slots, then lowest round-trip time).",
    )
    w.add_argument(
        "--memory",
        type=_size,
        default=0,
        help="memory the job needs: bytes, or with a KiB/MiB/GiB suffix (e.g. 512MiB)",
    )
    w.add_argument("--wasi", help="WASI version (default preview1)")
    w.add_argument("--arch", help="host architecture, e.g. x86_64 (default any)")
    w.add_argument(
        "--min-free-slots", type=_nonneg, default=0, help="free job slots the worker advertised"
    )
    w.add_argument("--limit", type=_nonneg, default=20, help="most workers to list (max 100)")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_workers)

    dn = sub.add_parser(
        "devnet",
        help="run a local network of N plasmd on loopback until Ctrl-C",
        description="Start N plasmd processes on 127.0.0.1 (node 0 is the seed, the "
        "others bootstrap from it through the DHT), each with its own data directory, "
        "log and kernel-chosen ports; print their addresses (also in DIR/devnet.json) "
        "and keep them running until Ctrl-C or SIGTERM, then stop them cleanly.",
    )
    dn.add_argument("--nodes", type=_nonneg, default=3, help="how many nodes (default 3)")
    dn.add_argument(
        "--dir", help="keep data directories and logs here (default: a temporary directory)"
    )
    dn.add_argument(
        "--once", action="store_true", help="start, print the addresses, then stop (a check)"
    )
    dn.set_defaults(func=cmd_devnet)

    r = sub.add_parser("receipts", help="list stored receipts, newest first")
    r.add_argument("--limit", type=_nonneg, default=20, help="receipts per page (max 1000)")
    r.add_argument("--page-token", help="from a previous page")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_receipts)

    g = sub.add_parser("receipt", help="show one stored receipt")
    g.add_argument("job_id")
    g.add_argument("--out", help="write the receipt (SignedEnvelope JSON) to this file")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_receipt)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as err:
        err_console.print(f"[red]plasm:[/] {escape(str(err))}", soft_wrap=True)
        return err.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
