"""`plasm receipts`, `plasm receipt` and `plasm verify`, and how a receipt and
its verification are shown (also by `plasm submit`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plasm_grpc.cli.output import (
    EXIT_UNVERIFIED,
    EXIT_USAGE,
    die,
    err_console,
    print_json,
    printable,
    read_file,
    say,
    say_styled,
    short,
    show_fields,
    show_grid,
    stderr_is_terminal,
)

if TYPE_CHECKING:
    from plasm_grpc.api.client import PlasmClient
    from plasm_grpc.api.verify import VerifyResult
    from plasm_grpc.api.views import ReceiptBody
    from plasm_grpc.core.envelope import SignedEnvelope


def connect(args: argparse.Namespace) -> PlasmClient:
    from plasm_grpc.api.client import connect

    return connect(args.addr, args.timeout)


def verification_json(result: VerifyResult) -> dict[str, Any]:
    return {
        "valid": result.valid,
        "signerNodeId": result.signer_node_id,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in result.checks],
    }


def body_of(result: VerifyResult) -> ReceiptBody | None:
    from plasm_grpc.api.views import ReceiptBody

    return ReceiptBody.from_pb(result.body) if result.body is not None else None


def show_verification(result: VerifyResult) -> None:
    # Receipt and server text is data, never markup (a signed "detail" could
    # otherwise restyle or hide what the verifier shows).
    if stderr_is_terminal():
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        table = Table(title="receipt verification", show_header=True, title_justify="left")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for c in result.checks:
            table.add_row(
                Text(printable(c.name)),
                "[green]ok[/]" if c.passed else "[red]FAILED[/]",
                Text(short(printable(c.detail, 4096))),
            )
        console = err_console()
        console.print(table)
        if result.valid:
            console.print(
                f"[green]receipt verified[/]: signed by node {escape(result.signer_node_id)}"
            )
        else:
            console.print("[red]receipt NOT verified[/]")
        return
    show_fields(
        "receipt verification",
        [
            (
                printable(c.name),
                ("ok     " if c.passed else "FAILED ") + short(printable(c.detail, 4096)),
            )
            for c in result.checks
        ],
        to_stderr=True,
    )
    if result.valid:
        say(f"receipt verified: signed by node {result.signer_node_id}")
    else:
        say("receipt NOT verified")


def show_body(body: ReceiptBody, title: str = "receipt") -> None:
    rows = [
        ("job id", body.job_id),
        ("outcome", body.outcome.lower() + (f" ({body.detail})" if body.detail else "")),
        ("exit code", str(body.exit_code)),
        ("trap", body.trap_code or "-"),
        ("fuel", f"{body.fuel_consumed:,} of {body.max_fuel:,}"),
        ("wall time", f"{body.wall_time_us / 1000:.3f} ms"),
        ("module sha256", body.module_sha256),
        ("input sha256", body.input_sha256),
        ("stdout", f"{body.stdout_bytes} bytes, sha256 {body.stdout_sha256}"),
        ("stderr", f"{body.stderr_bytes} bytes, sha256 {body.stderr_sha256}"),
        ("executor", body.executor_node_id),
        ("runtime", f"{body.runtime_name} {body.runtime_version} ({body.wasi_version})"),
        ("finished", body.finished_at),
    ]
    show_fields(title, [(k, short(printable(v, 4096))) for k, v in rows], to_stderr=True)


def load_envelope(path: str) -> SignedEnvelope:
    """A receipt file: proto3 JSON of a SignedEnvelope or StoredReceipt, or binary."""
    from plasm_grpc.api.jobs import envelope_from_binary, envelope_from_document

    raw = read_file(path, "receipt")
    if raw.lstrip().startswith(b"{"):
        try:
            document = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            die(f"receipt {path} is not valid JSON: {err}", EXIT_USAGE)
        if isinstance(document, dict) and "receipt" in document:
            document = document["receipt"]
        try:
            return envelope_from_document(document)
        except ValueError as err:
            die(f"receipt {path} is not a SignedEnvelope: {err}", EXIT_USAGE)
    try:
        return envelope_from_binary(raw)
    except ValueError:
        die(f"receipt {path} is neither JSON nor a binary SignedEnvelope", EXIT_USAGE)


def cmd_verify(args: argparse.Namespace) -> int:
    from plasm_grpc.api.client import ApiError
    from plasm_grpc.api.verify import ReceiptInput, verify_receipt
    from plasm_grpc.cli.output import parse_env

    if args.job_id:
        try:
            env = connect(args).get_receipt(args.job_id).envelope
        except ApiError as err:
            die(str(err))
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
    stdout = read_file(args.stdout_file, "stdout file") if args.stdout_file else None
    stderr = read_file(args.stderr_file, "stderr file") if args.stderr_file else None
    module = read_file(args.module, "module") if args.module else None
    if args.daemon:
        try:
            response = connect(args).verify(
                env,
                expected_executor_node_id=args.expect_node or "",
                stdout=stdout,
                stderr=stderr,
                module=module,
                job_input=None
                if job_input is None
                else (job_input.args, job_input.env, job_input.stdin),
            )
        except ApiError as err:
            die(str(err))
        if args.json:
            print_json(response.json())
        else:
            for c in response.checks:
                name, detail = printable(c.name), printable(c.detail, 4096)
                mark = ("ok", "green") if c.passed else ("FAILED", "red")
                say_styled(mark, (f" {name}: {detail}", ""))
            say_styled(("valid", "green") if response.valid else ("NOT valid", "red"))
        return 0 if response.valid else EXIT_UNVERIFIED
    result = verify_receipt(
        env,
        expected_executor_node_id=args.expect_node or None,
        stdout=stdout,
        stderr=stderr,
        module=module,
        job_input=job_input,
    )
    body = body_of(result)
    if args.json:
        out = verification_json(result)
        out["receiptBody"] = body.json() if body is not None else None
        print_json(out)
    else:
        if body is not None:
            show_body(body)
        show_verification(result)
    return 0 if result.valid else EXIT_UNVERIFIED


def cmd_receipts(args: argparse.Namespace) -> int:
    from plasm_grpc.api.client import ApiError

    try:
        page = connect(args).list_receipts(args.limit, args.page_token or "")
    except ApiError as err:
        die(str(err))
    if args.json:
        print_json(page.json())
        return 0
    # 80 columns hold the whole job id (to copy into `plasm receipt`): the time
    # to the second, the module in `plasm receipt` and --json.
    show_grid(
        "receipts (newest first)",
        ("job id", "finished (UTC)", "outcome", "wall ms"),
        [
            (
                b.job_id,
                b.finished_at[:19].replace("T", " "),
                b.outcome.lower() + (f" {b.exit_code}" if b.exit_code else ""),
                f"{b.wall_time_us / 1000:.2f}",
            )
            for b in page.receipts
        ],
        fold=("outcome",),
    )
    if page.next_page_token:
        say(f"more: plasm receipts --page-token {page.next_page_token}")
    return 0


def cmd_receipt(args: argparse.Namespace) -> int:
    from plasm_grpc.api.client import ApiError
    from plasm_grpc.api.views import envelope_json, envelope_json_text

    try:
        stored = connect(args).get_receipt(args.job_id)
    except ApiError as err:
        die(str(err))
    if args.out:
        Path(args.out).write_text(envelope_json_text(stored.envelope), "utf-8")
        say(f"receipt written to {args.out}")
    if args.json:
        print_json({"receipt": envelope_json(stored.envelope), "body": stored.body.json()})
    else:
        show_body(stored.body)
    return 0


__all__ = [
    "body_of",
    "cmd_receipt",
    "cmd_receipts",
    "cmd_verify",
    "load_envelope",
    "show_body",
    "show_verification",
    "verification_json",
]
