"""The Swift client (clients/swift), checked without a Swift toolchain.

No Swift toolchain installs on these machines, so this parses every .swift
file with tree-sitter-swift and fails on any syntax error, checks that
Package.swift declares the build plugins and pinned dependencies, that the
plugin configs and the proto copies match proto/, and that the Swift input
encoding and signing input, evaluated over their syntax trees, give the bytes
the Python code and the shared vectors give. It cannot type-check or run
Swift: `swift build && swift test` in clients/swift is the real test.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tree_sitter
import tree_sitter_swift

from plasm_grpc.core.envelope import RECEIPT_DOMAIN, signing_input
from plasm_grpc.core.input_hash import INPUT_DOMAIN, encode_input

REPO = Path(__file__).resolve().parents[1]
SWIFT = REPO / "clients" / "swift"
PACKAGE = SWIFT / "Package.swift"
TARGET = SWIFT / "Sources" / "PlasmClient"
VERIFIER = TARGET / "ReceiptVerifier.swift"
VECTOR_TESTS = SWIFT / "Tests" / "PlasmClientTests" / "VectorTests.swift"
PROTO_DIR = REPO / "proto" / "plasm" / "v1"
VECTORS = REPO / "tests" / "vectors" / "receipts.json"

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))
Node = tree_sitter.Node


def swift_files() -> list[Path]:
    return sorted(p for p in SWIFT.rglob("*.swift") if ".build" not in p.parts)


def parse(source: bytes) -> Node:
    return PARSER.parse(source).root_node


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def text(node: Node) -> str:
    return (node.text or b"").decode()


def field(node: Node, name: str) -> Node:
    child = node.child_by_field_name(name)
    assert child is not None, f"no {name} in `{text(node)[:80]}`"
    return child


def arguments(call: Node) -> list[tuple[str | None, Node]]:
    """A call's own arguments (not those of calls nested in them), as (label, value)."""
    found = []
    for group in call.children[-1].named_children:
        if group.type == "value_arguments":
            for argument in group.named_children:
                if argument.type == "value_argument":
                    label = argument.child_by_field_name("name")
                    found.append((text(label) if label else None, field(argument, "value")))
    return found


def string_literal(node: Node) -> str:
    """A plain string literal's value (no interpolation or escapes)."""
    assert node.type == "line_string_literal", f"not a string literal: `{text(node)}`"
    parts = node.children_by_field_name("text")
    assert all(p.type == "line_str_text" for p in parts), f"not a plain literal: {text(node)}"
    return "".join(text(p) for p in parts)


def declared_name(node: Node) -> str | None:
    name = node.child_by_field_name("name")
    if name is not None and name.type == "pattern":
        name = name.child_by_field_name("bound_identifier")
    return text(name) if name is not None else None


def declaration(root: Node, kind: str, name: str) -> Node:
    """The one `kind` declaration named `name` under `root` (tree-sitter-swift
    calls enums, structs and classes all class_declaration)."""
    found = [n for n in walk(root) if n.type == kind and declared_name(n) == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


# --- every Swift file parses -----------------------------------------------------


def syntax_problems(source: bytes, name: str) -> list[str]:
    """Every ERROR and MISSING node, as "name:line:col: what near `line`"."""
    lines = source.split(b"\n")
    problems = []
    for node in walk(parse(source)):
        if node.is_error or node.is_missing:
            row, col = node.start_point
            line = lines[row].decode(errors="replace").strip() if row < len(lines) else ""
            what = f"missing {node.type!r}" if node.is_missing else "syntax error"
            near = line[:100] or "(end of file)"
            problems.append(f"{name}:{row + 1}:{col + 1}: {what} near `{near}`")
    return problems


def test_the_swift_sources_exist() -> None:
    names = {p.relative_to(SWIFT).as_posix() for p in swift_files()}
    assert names >= {
        "Package.swift",
        "Sources/PlasmClient/PlasmClient.swift",
        "Sources/PlasmClient/ReceiptVerifier.swift",
        "Tests/PlasmClientTests/VectorTests.swift",
    }


@pytest.mark.parametrize("path", swift_files(), ids=lambda p: p.relative_to(SWIFT).as_posix())
def test_swift_file_parses(path: Path) -> None:
    problems = syntax_problems(path.read_bytes(), str(path.relative_to(REPO)))
    assert not problems, "tree-sitter-swift reports:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (b"import Foundation\nfunc broken( {\n}\n", "broken.swift:2:13: missing ')'"),
        (b"struct S {\n    var a: Int\n", "broken.swift:3:1: missing '}'"),
        (b'let s = "unterminated\n', "broken.swift:2:1: missing '\"'"),
        (b"func f() -> Int { return 1 + }\n", "broken.swift:1:28: syntax error"),
    ],
)
def test_a_broken_snippet_is_reported(snippet: bytes, expected: str) -> None:
    """The check above can fail: broken Swift is reported with its position."""
    problems = syntax_problems(snippet, "broken.swift")
    assert any(p.startswith(expected) for p in problems), problems


# --- Package.swift ---------------------------------------------------------------


def calls(source: bytes) -> list[tuple[str, dict[str, str]]]:
    """Each call in the source as (callee, {label: string literal argument})."""
    found = []
    for node in walk(parse(source)):
        if node.type == "call_expression":
            labelled = {
                label: string_literal(value)
                for label, value in arguments(node)
                if label is not None and value.type == "line_string_literal"
            }
            found.append((text(node.children[0]), labelled))
    return found


def test_package_swift_declares_tools_product_plugins_and_dependencies() -> None:
    source = PACKAGE.read_bytes()
    assert source.splitlines()[0] == b"// swift-tools-version: 5.9"
    found = calls(source)
    packages = {}
    for callee, args in found:
        if callee == ".package":
            versions = [args[k] for k in ("from", "exact") if k in args]
            assert len(versions) == 1, f"{args['url']}: pin with from: or exact:"
            assert re.fullmatch(r"\d+\.\d+\.\d+", versions[0]), versions
            name = args["url"].rstrip("/").removesuffix(".git").rsplit("/", 1)[-1]
            packages[name] = versions[0]
    assert set(packages) >= {"grpc-swift", "swift-protobuf", "swift-crypto"}, packages
    # GRPCSwiftPlugin and grpc-swift-config.json are grpc-swift 1.x.
    assert packages["grpc-swift"].startswith("1."), packages
    assert (".library", {"name": "PlasmClient"}) in found

    plugins = {(a["name"], a["package"]) for c, a in found if c == ".plugin"}
    assert plugins == {("SwiftProtobufPlugin", "swift-protobuf"), ("GRPCSwiftPlugin", "grpc-swift")}
    products = {(a["name"], a["package"]) for c, a in found if c == ".product"}
    assert products >= {
        ("GRPC", "grpc-swift"),
        ("SwiftProtobuf", "swift-protobuf"),
        ("Crypto", "swift-crypto"),
    }
    used = {package for _, package in plugins | products}
    assert used <= set(packages), f"not declared as dependencies: {used - set(packages)}"


def test_no_generated_swift_is_committed() -> None:
    generated = [p for p in swift_files() if p.name.endswith((".pb.swift", ".grpc.swift"))]
    assert not generated, "the build plugins generate these at build time"


# --- the protos the plugins compile ------------------------------------------------


def proto_names() -> list[str]:
    return sorted(p.name for p in PROTO_DIR.glob("*.proto"))


def plugin_config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((TARGET / name).read_text())
    return config


def test_proto_copies_equal_proto_dir_byte_for_byte() -> None:
    copies = TARGET / "plasm" / "v1"
    names = sorted(p.name for p in copies.iterdir())
    assert names == proto_names(), "run clients/swift/sync-protos.sh"
    for name in proto_names():
        assert (copies / name).read_bytes() == (PROTO_DIR / name).read_bytes(), (
            f"{copies / name} differs from proto/plasm/v1/{name}: run clients/swift/sync-protos.sh"
        )


def test_plugin_configs_cover_the_protos() -> None:
    """Both plugins run protoc with their config file's directory as the import
    path, so the configs sit where the "plasm/v1/..." imports resolve."""
    [messages] = plugin_config("swift-protobuf-config.json")["invocations"]
    assert sorted(messages["protoFiles"]) == [f"plasm/v1/{n}" for n in proto_names()]
    assert messages["visibility"] == "public"

    with_services = [
        n for n in proto_names() if re.search(r"^service ", (PROTO_DIR / n).read_text(), re.M)
    ]
    assert with_services == ["service.proto"]
    [services] = plugin_config("grpc-swift-config.json")["invocations"]
    assert services["protoFiles"] == ["plasm/v1/service.proto"]
    assert services["visibility"] == "public"
    assert services["server"] is False
    assert services.get("client", True) is True


@pytest.mark.parametrize("protoc", ["system", "grpc_tools"])
def test_protoc_compiles_the_copies_as_the_plugins_invoke_it(protoc: str, tmp_path: Path) -> None:
    """`protoc -I <config dir> <protoFiles>`, as both plugins run it: the imports
    resolve inside the target, and protoc finds the well-known types
    (google/protobuf/timestamp.proto) next to itself (Debian: libprotobuf-dev)."""
    files = plugin_config("swift-protobuf-config.json")["invocations"][0]["protoFiles"]
    out = tmp_path / "descriptors.pb"
    if protoc == "system":
        system = shutil.which("protoc")
        if system is None:
            pytest.skip("no protoc on PATH (Debian: protobuf-compiler)")
        command = [system]
    else:
        command = [sys.executable, "-m", "grpc_tools.protoc"]
    result = subprocess.run(
        [*command, "-I", str(TARGET), f"-o{out}", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0


def test_sync_protos_check_passes() -> None:
    result = subprocess.run(
        ["bash", str(SWIFT / "sync-protos.sh"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sync_protos_finds_and_repairs_drift(tmp_path: Path) -> None:
    shutil.copytree(PROTO_DIR, tmp_path / "proto" / "plasm" / "v1")
    swift = tmp_path / "clients" / "swift"
    copies = swift / "Sources" / "PlasmClient" / "plasm" / "v1"
    shutil.copytree(PROTO_DIR, copies)
    shutil.copy(SWIFT / "sync-protos.sh", swift / "sync-protos.sh")

    def sync(*args: str) -> int:
        cmd = ["bash", str(swift / "sync-protos.sh"), *args]
        return subprocess.run(cmd, capture_output=True, check=False).returncode

    assert sync("--check") == 0
    (copies / "receipt.proto").write_bytes((copies / "receipt.proto").read_bytes() + b" ")
    (copies / "stale.proto").write_text('syntax = "proto3";\n')
    assert sync("--check") == 1
    assert sync() == 0
    assert sync("--check") == 0
    assert sorted(p.name for p in copies.iterdir()) == proto_names()


# --- the domains and encodings the verifier signs and hashes ---------------------


def static_string(root: Node, owner: str, name: str) -> str:
    prop = declaration(declaration(root, "class_declaration", owner), "property_declaration", name)
    return string_literal(field(prop, "value"))


def verifier_tree(source: bytes | None = None) -> Node:
    return parse(source if source is not None else VERIFIER.read_bytes())


def test_receipt_domain_matches_python() -> None:
    assert static_string(verifier_tree(), "ReceiptVerifier", "receiptDomain") == RECEIPT_DOMAIN


def test_input_domain_matches_python() -> None:
    domain = static_string(verifier_tree(), "InputHash", "domain")
    assert domain.encode() + b"\x00" == INPUT_DOMAIN


class UnsupportedSwiftError(Exception):
    """The Swift uses a construct this small evaluator does not know."""


class SwiftSubset:
    """Evaluates the few Swift constructs the byte encodings are written in
    (`Data`, `UInt32`/`UInt64`/`UInt8(truncatingIfNeeded:)`, `.append`,
    `.count`, `.utf8`, `>>`, `for`, `let`/`var`, `return`) with their Swift
    meaning, so the encodings can be compared byte for byte with Python's
    without a Swift toolchain. Anything else raises UnsupportedSwiftError."""

    def __init__(self, owner: Node) -> None:
        self.statics: dict[str, Any] = {}
        self.functions: dict[str, Node] = {}
        for member in field(owner, "body").named_children:
            if member.type == "property_declaration":
                value = field(member, "value")
                if value.type == "line_string_literal":
                    self.statics[str(declared_name(member))] = string_literal(value)
            elif member.type == "function_declaration":
                self.functions[str(declared_name(member))] = member

    def call(self, name: str, *args: Any) -> Any:
        function = self.functions[name]
        params = [p for p in function.named_children if p.type == "parameter"]
        names = [text(p.children_by_field_name("name")[0]) for p in params]
        scope = {**self.statics, **dict(zip(names, args, strict=True))}
        returned = self.run(field(function, "body"), scope)
        return returned[0] if returned else None

    def run(self, block: Node, scope: dict[str, Any]) -> tuple[Any] | None:
        """Run a block's statements; a `return` gives (value,)."""
        for statement in block.named_children:
            kind = statement.type
            if kind in ("statements", "function_body"):
                if returned := self.run(statement, scope):
                    return returned
            elif kind == "property_declaration":
                scope[str(declared_name(statement))] = self.eval(field(statement, "value"), scope)
            elif kind == "for_statement":
                variable = text(field(field(statement, "item"), "bound_identifier"))
                bodies = [b for b in statement.named_children if b.type == "statements"]
                for element in self.eval(field(statement, "collection"), scope):
                    scope[variable] = element
                    for body in bodies:
                        if returned := self.run(body, scope):
                            return returned
            elif kind == "control_transfer_statement" and text(statement).startswith("return"):
                return (self.eval(field(statement, "result"), scope),)
            elif kind != "comment":
                self.eval(statement, scope)
        return None

    def eval(self, node: Node, scope: dict[str, Any]) -> Any:
        kind = node.type
        if kind == "integer_literal":
            return int(text(node), 0)
        if kind == "simple_identifier":
            return scope[text(node)]
        if kind == "array_literal":
            return [self.eval(e, scope) for e in node.children_by_field_name("element")]
        if kind == "prefix_expression" and text(node).startswith("&"):
            return self.eval(field(node, "target"), scope)  # inout: the same bytearray
        if kind == "navigation_expression":
            return self.member(self.eval(field(node, "target"), scope), field(node, "suffix"))
        if kind == "bitwise_operation" and any(c.type == ">>" for c in node.children):
            return self.eval(field(node, "lhs"), scope) >> self.eval(field(node, "rhs"), scope)
        if kind == "call_expression":
            args = [(label, self.eval(value, scope)) for label, value in arguments(node)]
            return self.call_expression(node.children[0], args, scope)
        raise UnsupportedSwiftError(f"{kind}: {text(node)}")

    def member(self, value: Any, suffix: Node) -> Any:
        name = text(suffix).lstrip(".")
        if name == "utf8" and isinstance(value, str):
            return value.encode("utf-8")
        if name == "count":
            return len(value)
        if isinstance(value, dict) and name in value:
            return value[name]  # a labelled tuple element
        raise UnsupportedSwiftError(f"member {name} of {type(value).__name__}")

    def call_expression(
        self, callee: Node, args: list[tuple[str | None, Any]], scope: dict[str, Any]
    ) -> Any:
        labels = [label for label, _ in args]
        values = [value for _, value in args]
        if callee.type == "navigation_expression" and text(field(callee, "suffix")) == ".append":
            data = self.eval(field(callee, "target"), scope)
            assert isinstance(data, bytearray)
            [value] = values
            if isinstance(value, int):
                assert 0 <= value <= 0xFF, "Data.append(UInt8) of a value above 255"
                data.append(value)
            else:
                data.extend(value)
            return None
        name = text(callee)
        if name == "Data" and labels == [None]:
            return bytearray(values[0])
        if name in ("UInt32", "UInt64") and labels == [None]:
            bits = 32 if name == "UInt32" else 64
            assert 0 <= values[0] < 1 << bits, f"{name}({values[0]}) traps"
            return values[0]
        if name == "UInt8" and labels == ["truncatingIfNeeded"]:
            return values[0] & 0xFF
        if name in self.functions:
            return self.call(name, *values)
        raise UnsupportedSwiftError(f"call of {text(callee)}")


def swift_encode_input(
    tree: Node, args: list[str], env: list[tuple[str, str]], stdin: bytes
) -> bytes:
    evaluator = SwiftSubset(declaration(tree, "class_declaration", "InputHash"))
    env_tuples = [{"name": name, "value": value} for name, value in env]
    return bytes(evaluator.call("encode", args, env_tuples, bytearray(stdin)))


def input_cases() -> list[tuple[str, list[str], list[tuple[str, str]], bytes, str]]:
    """The input vectors and the inputs of the valid receipt cases."""
    vectors = json.loads(VECTORS.read_text())
    inputs = [(v["name"], v) for v in vectors["input_vectors"]]
    inputs += [(c["name"], c["input"]) for c in vectors["cases"] if c["input"]]
    return [
        (
            name,
            list(v["args"]),
            [(n, value) for n, value in v["env"]],
            base64.b64decode(v["stdin_b64"]),
            v["input_encoding_hex"],
        )
        for name, v in inputs
    ]


def test_swift_input_encoding_matches_python_and_the_vectors() -> None:
    tree = verifier_tree()
    cases = input_cases()
    assert len(cases) >= 10
    for name, args, env, stdin, encoding_hex in cases:
        swift = swift_encode_input(tree, args, env, stdin)
        assert swift == encode_input(args, env, stdin), name
        assert swift.hex() == encoding_hex, name
    stdin = bytes(70000)  # a length above 0xFFFF
    assert swift_encode_input(tree, ["a"], [], stdin) == encode_input(["a"], [], stdin)


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        ("for shift in [24, 16, 8, 0]", "for shift in [0, 8, 16, 24]"),
        ("appendU64(&out, stdin.count)", "appendU32(&out, stdin.count)"),
        ("appendString(&out, variable.name)\n", "appendString(&out, variable.value)\n"),
        ("out.append(0)\n", "out.append(1)\n"),
        ('domain = "plasm/input/v1"', 'domain = "plasm/input/v2"'),
    ],
)
def test_a_changed_swift_encoding_is_caught(original: str, broken: str) -> None:
    """The comparison above can fail: each of these edits makes Swift disagree."""
    source = VERIFIER.read_text()
    assert original in source
    tree = verifier_tree(source.replace(original, broken, 1).encode())
    mismatches = [
        name
        for name, args, env, stdin, _ in input_cases()
        if swift_encode_input(tree, args, env, stdin) != encode_input(args, env, stdin)
    ]
    assert mismatches


def test_swift_signing_input_matches_python() -> None:
    evaluator = SwiftSubset(declaration(verifier_tree(), "class_declaration", "ReceiptVerifier"))
    for domain, payload in [(RECEIPT_DOMAIN, b"\x08\x01payload"), ("plasm/decline/v1", b"")]:
        swift = evaluator.call("signingInput", domain, bytearray(payload))
        assert bytes(swift) == signing_input(domain, payload)


def test_the_evaluator_refuses_what_it_does_not_know() -> None:
    source = b"enum E {\n    static func f() -> Int {\n        return [1, 2].max()!\n    }\n}\n"
    evaluator = SwiftSubset(declaration(parse(source), "class_declaration", "E"))
    with pytest.raises(UnsupportedSwiftError):
        evaluator.call("f")


# --- the XCTest reads the shared vectors ------------------------------------------


def test_vector_tests_locate_the_shared_vectors() -> None:
    """VectorTests.swift finds tests/vectors/receipts.json from its #filePath."""
    prop = declaration(parse(VECTOR_TESTS.read_bytes()), "property_declaration", "vectorsURL")
    source = text(prop)
    assert "URL(fileURLWithPath: #filePath)" in source
    ups = source.count(".deletingLastPathComponent()")
    [relative] = re.findall(r'\.appendingPathComponent\("([^"]+)"\)', source)
    assert (VECTOR_TESTS.parents[ups - 1] / relative).resolve() == VECTORS


def test_vector_tests_expect_a_failure_for_every_broken_case() -> None:
    tree = parse(VECTOR_TESTS.read_bytes())
    literal = field(declaration(tree, "property_declaration", "firstFailedCheck"), "value")
    assert literal.type == "dictionary_literal"
    keys = [string_literal(k) for k in literal.children_by_field_name("key")]
    values = [string_literal(v) for v in literal.children_by_field_name("value")]
    expected = dict(zip(keys, values, strict=True))
    cases = json.loads(VECTORS.read_text())["cases"]
    assert set(expected) == {c["name"] for c in cases if not c["expected_valid"]}
    fits: dict[str, Callable[[dict[str, Any]], bool]] = {
        "signature": lambda c: not c["expected_signature_valid"],
        "signer": lambda c: c["expected_error"] == "signer_mismatch",
        "decode": lambda c: c["expected_error"] == "malformed" and c["expected_signature_valid"],
    }
    for case in cases:
        if not case["expected_valid"]:
            assert fits[expected[case["name"]]](case), case["name"]
