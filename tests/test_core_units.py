"""Unit tests: ids, keys, limits, the input-hash encoding and plasmd configuration."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from plasm_grpc.core.errors import InvalidIdError, LimitError, PlasmError
from plasm_grpc.core.ids import (
    check_hex64,
    check_job_id,
    new_job_id,
    node_id_from_public_key,
    sha256_hex,
)
from plasm_grpc.core.input_hash import encode_input, input_sha256
from plasm_grpc.core.keys import NodeKey, verify_signature
from plasm_grpc.core.limits import (
    DEFAULT_LIMITS,
    MAXIMUM_LIMITS,
    ResourceLimits,
    resolve_limits,
)
from plasm_grpc.daemon.config import (
    DEFAULT_GRPC_LISTEN,
    Config,
    ConfigError,
    load_config,
    to_toml,
)

HEX64 = "0123456789abcdef" * 4

# RFC 8032, section 7.1, TEST 1.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


# -- ids -----------------------------------------------------------------------------------


def test_node_id_is_sha256_of_the_raw_public_key() -> None:
    public = bytes(range(32))
    node_id = node_id_from_public_key(public)
    assert node_id == hashlib.sha256(public).hexdigest()
    assert len(node_id) == 64
    assert node_id == node_id.lower()
    assert check_hex64(node_id, "node id") == node_id


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_node_id_needs_a_32_byte_key(length: int) -> None:
    with pytest.raises(InvalidIdError, match="32 bytes"):
        node_id_from_public_key(b"\x01" * length)


def test_check_hex64_accepts_lowercase_hex() -> None:
    assert check_hex64(HEX64, "x") == HEX64
    assert check_hex64(sha256_hex(b""), "x") == sha256_hex(b"")


@pytest.mark.parametrize(
    "value",
    [
        HEX64.upper(),
        HEX64[:-1] + "A",
        HEX64[:63],
        HEX64 + "0",
        HEX64[:63] + "g",
        HEX64 + "\n",
        " " + HEX64[1:],
        "",
        "٠" * 64,  # Arabic-Indic digits are not hex
    ],
)
def test_check_hex64_rejects(value: str) -> None:
    with pytest.raises(InvalidIdError, match="module_sha256"):
        check_hex64(value, "module_sha256")


def test_invalid_id_error_is_a_value_error_and_plasm_error() -> None:
    with pytest.raises(ValueError, match="lowercase"):
        check_hex64("X", "x")
    assert issubclass(InvalidIdError, PlasmError)


def test_job_ids() -> None:
    job_id = new_job_id(bytes(range(16)))
    assert job_id == bytes(range(16)).hex()
    assert check_job_id(job_id) == job_id
    for bad in (job_id.upper(), job_id[:-1], job_id + "0", HEX64):
        with pytest.raises(InvalidIdError):
            check_job_id(bad)
    for size in (0, 15, 17, 32):
        with pytest.raises(InvalidIdError):
            new_job_id(b"\x00" * size)


# -- keys ----------------------------------------------------------------------------------


def test_from_seed_is_deterministic() -> None:
    seed = hashlib.sha256(b"plasm unit test key").digest()
    a, b = NodeKey.from_seed(seed), NodeKey.from_seed(seed)
    assert a.public_key == b.public_key
    assert a.node_id == b.node_id == node_id_from_public_key(a.public_key)
    assert a.seed() == seed
    assert a.sign(b"message") == b.sign(b"message")  # Ed25519 is deterministic
    other = NodeKey.from_seed(hashlib.sha256(b"another key").digest())
    assert other.public_key != a.public_key


def test_rfc8032_known_answer() -> None:
    key = NodeKey.from_seed(RFC8032_SEED)
    assert key.public_key == RFC8032_PUBLIC
    assert key.sign(b"") == RFC8032_SIG_EMPTY
    assert verify_signature(RFC8032_PUBLIC, RFC8032_SIG_EMPTY, b"")
    assert not verify_signature(RFC8032_PUBLIC, RFC8032_SIG_EMPTY, b"\x00")


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_from_seed_rejects_wrong_length(length: int) -> None:
    with pytest.raises(InvalidIdError, match="32 bytes"):
        NodeKey.from_seed(b"\x07" * length)


def test_repr_and_str_hide_the_seed() -> None:
    seed = hashlib.sha256(b"secret seed for repr").digest()
    key = NodeKey.from_seed(seed)
    for text in (repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})):
        assert seed.hex() not in text
        assert seed.hex().upper() not in text
        assert repr(seed) not in text
        assert key.node_id in text


def test_verify_signature_wrong_lengths_return_false() -> None:
    key = NodeKey.from_seed(RFC8032_SEED)
    sig = key.sign(b"m")
    assert verify_signature(key.public_key, sig, b"m")
    assert not verify_signature(key.public_key[:31], sig, b"m")
    assert not verify_signature(key.public_key, sig[:63], b"m")
    assert not verify_signature(key.public_key, sig + b"\x00", b"m")
    assert not verify_signature(b"\xff" * 32, sig, b"m")


# -- input hash known answer ---------------------------------------------------------------


def test_input_encoding_known_answer() -> None:
    """The worked example in tests/vectors/README.md."""
    expected = bytes.fromhex(
        "706c61736d2f696e7075742f763100"
        "00000001" + "00000001" + "61"
        "00000001" + "00000001" + "4b" + "00000001" + "56"
        "0000000000000001" + "78"
    )
    assert encode_input(["a"], [("K", "V")], b"x") == expected
    assert input_sha256(["a"], [("K", "V")], b"x") == hashlib.sha256(expected).hexdigest()


def test_input_encoding_counts_utf8_bytes_not_characters() -> None:
    encoded = encode_input(["é"], [], b"")
    assert encoded.endswith(bytes.fromhex("00000001" + "00000002") + "é".encode() + bytes(12))


# -- limits --------------------------------------------------------------------------------

FIELDS = [f.name for f in dataclasses.fields(ResourceLimits)]


def test_resolve_fills_zeros_from_defaults() -> None:
    resolved = resolve_limits(ResourceLimits(), DEFAULT_LIMITS, MAXIMUM_LIMITS)
    assert resolved == DEFAULT_LIMITS
    partial = resolve_limits(ResourceLimits(timeout_ms=123), DEFAULT_LIMITS, MAXIMUM_LIMITS)
    assert partial == dataclasses.replace(DEFAULT_LIMITS, timeout_ms=123)


def test_resolve_keeps_values_at_the_maximum() -> None:
    assert resolve_limits(MAXIMUM_LIMITS, DEFAULT_LIMITS, MAXIMUM_LIMITS) == MAXIMUM_LIMITS


def test_resolve_never_exceeds_the_maximum_when_defaults_do() -> None:
    small_max = ResourceLimits(
        max_memory_bytes=1, max_fuel=1, timeout_ms=1, max_stdout_bytes=1, max_stderr_bytes=1
    )
    assert resolve_limits(ResourceLimits(), DEFAULT_LIMITS, small_max) == small_max


@pytest.mark.parametrize("name", FIELDS)
def test_resolve_refuses_above_maximum(name: str) -> None:
    requested = ResourceLimits(**{name: getattr(MAXIMUM_LIMITS, name) + 1})
    with pytest.raises(LimitError, match=name):
        resolve_limits(requested, DEFAULT_LIMITS, MAXIMUM_LIMITS)


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("value", [-1, -(2**63), 1.5, "10", None])
def test_limits_reject_negative_and_non_integers(name: str, value: object) -> None:
    with pytest.raises(LimitError, match=name):
        ResourceLimits(**{name: value})  # type: ignore[arg-type]


# -- configuration -------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plasmd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_none_gives_working_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/var/tmp/xdg")
    config = load_config(None)
    assert config == Config()
    assert config.data_dir == Path("/var/tmp/xdg/plasm")
    assert config.grpc.listen == DEFAULT_GRPC_LISTEN
    assert config.grpc.listen.startswith("127.0.0.1:")
    assert config.grpc.unix_socket == ""
    assert config.limits.default == DEFAULT_LIMITS
    assert config.limits.max == MAXIMUM_LIMITS
    assert config.effective_slots() >= 1


def test_empty_file_equals_no_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == load_config(None)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bogus = 1\n", "'bogus'"),
        ("[grpc]\nlisten_addr = '127.0.0.1:1'\n", "'grpc.listen_addr'"),
        ("[limits.default]\nmemory = 1\n", "'limits.default.memory'"),
        ("[sandbox]\nmax_stack = 1\n", "'sandbox.max_stack'"),
        ("[network]\nport = 1\n", "'network'"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[grpc]\nlisten = 5\n", "grpc.listen must be a string"),
        ("[jobs]\nslots = '4'\n", "jobs.slots must be a non-negative integer"),
        ("[jobs]\nslots = -1\n", "jobs.slots must be a non-negative integer"),
        ("[jobs]\nslots = true\n", "jobs.slots must be a non-negative integer"),
        ("[jobs]\nslots = 1.5\n", "jobs.slots must be a non-negative integer"),
        ("[jobs]\ndrain_timeout_s = 'x'\n", "jobs.drain_timeout_s must be a non-negative number"),
        ("[jobs]\ndrain_timeout_s = -1.0\n", "jobs.drain_timeout_s must be a non-negative"),
        ("[jobs]\ndrain_timeout_s = false\n", "jobs.drain_timeout_s must be a non-negative"),
        ("data_dir = 3\n", "data_dir must be a non-empty path string"),
        ("data_dir = ''\n", "data_dir must be a non-empty path string"),
        ("grpc = 5\n", "grpc must be a table"),
        ("[limits]\nmax = 'big'\n", "limits.max must be a table"),
        ("[log]\nlevel = 'loud'\n", "log.level must be debug, info, warning or error"),
        ("[grpc]\nlisten = 'nope'\n", "grpc.listen must be host:port"),
        ("[grpc]\nlisten = ''\n", "set grpc.listen or grpc.unix_socket"),
        ("[sandbox]\nepoch_tick_ms = 0\n", "sandbox.epoch_tick_ms must be positive"),
        ("[grpc]\nmax_message_bytes = 1024\n", "grpc.max_message_bytes must hold"),
    ],
)
def test_bad_values_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("name", FIELDS)
def test_default_above_max_is_an_error(tmp_path: Path, name: str) -> None:
    over = getattr(MAXIMUM_LIMITS, name) + 1
    with pytest.raises(ConfigError, match=f"limits.default.{name} is above limits.max.{name}"):
        load_config(write(tmp_path, f"[limits.default]\n{name} = {over}\n"))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[grpc\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_values_are_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "data_dir = '/srv/plasm'\n"
            "[grpc]\nlisten = '[::1]:7000'\nunix_socket = '/run/plasm/plasmd.sock'\n"
            "shutdown_grace_s = 2\n"
            "[jobs]\nslots = 3\n"
            "[log]\nlevel = 'debug'\n",
        )
    )
    assert config.data_dir == Path("/srv/plasm")
    assert config.grpc.listen == "[::1]:7000"
    assert config.grpc.unix_socket == "/run/plasm/plasmd.sock"
    assert config.grpc.shutdown_grace_s == 2.0
    assert isinstance(config.grpc.shutdown_grace_s, float)
    assert config.jobs.slots == 3
    assert config.effective_slots() == 3
    assert config.log.level == "debug"


def test_partial_limits_default_keeps_the_other_defaults(tmp_path: Path) -> None:
    """Setting one default limit must not zero the others (every key is optional)."""
    config = load_config(write(tmp_path, "[limits.default]\ntimeout_ms = 5000\n"))
    assert config.limits.default == dataclasses.replace(DEFAULT_LIMITS, timeout_ms=5000)


def test_partial_limits_max_keeps_the_other_maxima(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[limits.max]\ntimeout_ms = 600000\n"))
    assert config.limits.max == dataclasses.replace(MAXIMUM_LIMITS, timeout_ms=600000)


def test_to_toml_round_trips_defaults(tmp_path: Path) -> None:
    config = load_config(None)
    assert load_config(write(tmp_path, to_toml(config))) == config


def test_to_toml_round_trips_custom_values(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "data_dir = '/srv/plasm data'\n"
            "[grpc]\nlisten = '0.0.0.0:9999'\nunix_socket = '/run/plasmd.sock'\n"
            "shutdown_grace_s = 0.25\n"
            "[jobs]\nslots = 7\nqueue = 0\n"
            "[sandbox]\nepoch_tick_ms = 1.5\nmax_cached_modules = 1\n"
            "[limits.default]\nmax_memory_bytes = 1048576\nmax_fuel = 5\ntimeout_ms = 7\n"
            "max_stdout_bytes = 9\nmax_stderr_bytes = 11\n"
            "[log]\nlevel = 'warning'\n",
        )
    )
    assert config != load_config(None)
    text = to_toml(config)
    again = load_config(write(tmp_path, text))
    assert again == config
    assert to_toml(again) == text


@pytest.mark.parametrize(
    "data_dir", ["/srv/pl\\asm", '/srv/"quoted"', "/srv/tab\there", "/srv/ünïcode"]
)
def test_to_toml_round_trips_unusual_paths(tmp_path: Path, data_dir: str) -> None:
    """Any path Linux allows must survive --print-config (quotes, backslashes, tabs)."""
    config = dataclasses.replace(load_config(None), data_dir=Path(data_dir))
    assert load_config(write(tmp_path, to_toml(config))) == config


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[limits.max]\nmax_memory_bytes = 1099511627776\n", "limits.max.max_memory_bytes"),
        ("[sandbox]\nmax_wasm_stack = 0\n", "sandbox.max_wasm_stack"),
        ("[jobs]\nslots = 100000\n", "jobs.slots"),
        ("[grpc]\nmax_message_bytes = 4294967296\n", "grpc.max_message_bytes"),
        ("[limits.max]\ntimeout_ms = 4294967296\n", "limits.max.timeout_ms"),
        ("[limits.max]\nmax_stdout_bytes = 67108864\n", "max_stdout_bytes"),
    ],
)
def test_out_of_range_settings_are_config_errors(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "plasmd.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)
