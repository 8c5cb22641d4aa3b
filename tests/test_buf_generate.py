"""clients/buf.gen.example.yaml: `buf generate` makes another language's code from proto/.

docs/clients.md tells users to start from that template; this runs it exactly
as documented (offline: protoc's built-in generators and a local plugin) and
checks that every proto file produced its output in each language.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "clients" / "buf.gen.example.yaml"
PROTOS = sorted((REPO / "proto" / "plasm" / "v1").glob("*.proto"))


def _camel(stem: str) -> str:
    return "".join(part.capitalize() for part in stem.split("_"))


def test_the_example_template_generates_every_proto_in_every_language(tmp_path: Path) -> None:
    if shutil.which("npx") is None or not Path("/usr/bin/protoc").exists():
        pytest.fail("npx and /usr/bin/protoc are needed: run scripts/install-deps.sh")
    out = tmp_path / "gen"
    run = subprocess.run(
        ["npx", "--no-install", "buf", "generate", "--template", str(TEMPLATE), "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert PROTOS, "no protos found"
    for proto in PROTOS:
        stem = proto.stem
        # protoc's outer class takes the file's name, or ...OuterClass when a
        # message or enum in the file already has that name (reachability.proto).
        java = out / "java" / "plasm" / "v1"
        assert {f"{_camel(stem)}.java", f"{_camel(stem)}OuterClass.java"} & {
            p.name for p in java.iterdir()
        }, stem
        assert (out / "cpp" / "plasm" / "v1" / f"{stem}.pb.h").is_file(), stem
        assert (out / "cpp" / "plasm" / "v1" / f"{stem}.pb.cc").is_file(), stem
        assert (out / "python-stubs" / "plasm" / "v1" / f"{stem}_pb2.pyi").is_file(), stem
    # The service is there to generate stubs from, in every language.
    header = (out / "cpp" / "plasm" / "v1" / "service.pb.h").read_text()
    assert "class SubmitRequest" in header
    assert "class WatchResponse" in header
