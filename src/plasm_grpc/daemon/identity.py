"""The node's identity key and other secrets in the data directory.

The Ed25519 seed is created on first start with mode 0600 (O_EXCL, so two
starting daemons cannot race to different keys) and never leaves the node.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from plasm_grpc.core.keys import SEED_BYTES, NodeKey

KEY_FILE = "node.key"
CACHE_MAC_FILE = "cache.mac.key"


class IdentityError(RuntimeError):
    pass


def _load_or_create_secret(path: Path, size: int) -> bytes:
    if not path.exists():
        # Write a temp file, then hard-link it into place: the key appears
        # whole or not at all (a crash mid-write leaves no empty key), and if
        # two daemons race, link() lets exactly one win.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)  # a leftover from a crash; never follow a planted link
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, os.urandom(size))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        raise IdentityError(f"{path} must be a regular file owned by uid {os.getuid()}")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    data = path.read_bytes()
    if len(data) != size:
        raise IdentityError(f"{path} should hold {size} bytes, found {len(data)}")
    return data


def load_node_key(data_dir: Path) -> tuple[NodeKey, bool]:
    """Return the node key, creating it if absent, and whether it was created."""
    path = data_dir / KEY_FILE
    existed = path.exists()
    return NodeKey.from_seed(_load_or_create_secret(path, SEED_BYTES)), not existed


def load_cache_mac_key(data_dir: Path) -> bytes:
    return _load_or_create_secret(data_dir / CACHE_MAC_FILE, 32)


def prepare_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = data_dir.stat()
    if info.st_uid != os.getuid():
        raise IdentityError(
            f"data directory {data_dir} is owned by uid {info.st_uid}, not by this user "
            f"({os.getuid()}); someone else could replace the node key there"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise IdentityError(
            f"data directory {data_dir} is writable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}); run: chmod go-w {data_dir}"
        )
    if not os.access(data_dir, os.W_OK):
        raise IdentityError(f"data directory {data_dir} is not writable")
