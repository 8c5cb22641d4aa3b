"""Where the node's gRPC server listens: a TCP address and a Unix socket.

The socket path is claimed without taking over a live daemon's socket, the
socket is created 0660 (owner and group: the local clients) with no window
in between, and at stop it is removed only if it is still ours. Bind
failures are StartupErrors that say why the OS refused.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from plasm_grpc.api.server import BindError, NodeServer
from plasm_grpc.daemon.config import Config, ConfigError, parse_host_port
from plasm_grpc.daemon.errors import StartupError


@dataclass(slots=True)
class GrpcListening:
    addresses: list[str]
    """Where clients reach the server (a TCP port 0 replaced by the one bound)."""
    old_umask: int | None = None

    def restore_umask(self) -> None:
        """After the server has started: its socket file exists, with our mode."""
        if self.old_umask is not None:
            os.umask(self.old_umask)
            self.old_umask = None


def bind_grpc(server: NodeServer, config: Config) -> GrpcListening:
    """Bind grpc.listen and grpc.unix_socket. With a socket, the umask stays
    0117 until `restore_umask()`: call it once the server has started."""
    listening = GrpcListening([])
    if config.grpc.listen:
        host, port = parse_host_port(config.grpc.listen)
        bound = _bind(server, f"{config.grpc.listen}")
        listening.addresses.append(f"{host}:{bound}" if port == 0 else config.grpc.listen)
    if config.grpc.unix_socket:
        sock = Path(config.grpc.unix_socket)
        _claim_socket_path(sock)
        # Created 0660 from the start (owner and group: local clients), no window.
        old_umask = os.umask(0o117)
        try:
            _bind(server, f"unix:{sock}")
        except BaseException:
            os.umask(old_umask)
            raise
        listening.old_umask = old_umask
        listening.addresses.append(f"unix:{sock}")
    return listening


def own_socket(config: Config) -> int | None:
    """Once serving: the socket's mode made sure, and its inode, to know it as ours at stop."""
    if not config.grpc.unix_socket:
        return None
    os.chmod(config.grpc.unix_socket, 0o660)
    return os.lstat(config.grpc.unix_socket).st_ino


def remove_socket(config: Config, inode: int | None) -> None:
    if config.grpc.unix_socket:
        sock = Path(config.grpc.unix_socket)
        with contextlib.suppress(FileNotFoundError):
            if sock.lstat().st_ino == inode:  # ours, not a successor's
                sock.unlink()


def _claim_socket_path(sock: Path) -> None:
    """Make way for our socket, but never take over a live daemon's."""
    sock.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        info = sock.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(
            f"{sock} exists and is not a socket; remove it or set another grpc.unix_socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(sock))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.unlink(missing_ok=True)  # left behind by a crashed run
        return
    finally:
        probe.close()
    raise StartupError(
        f"another process is serving on {sock}; stop it or set another grpc.unix_socket"
    )


def _bind(server: NodeServer, address: str) -> int:
    try:
        return server.bind(address)
    except BindError as err:
        why = _bind_error(address) or str(err)
        raise StartupError(f"cannot listen on {address}: {why}") from err


def _bind_error(address: str) -> str | None:
    """Why the OS refuses to bind `address` (gRPC's own message only says
    that it failed; its details go to C-core's unstructured log)."""
    if address.startswith("unix:"):
        return None
    try:
        host, port = parse_host_port(address)
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
    except OSError as err:
        return err.strerror or str(err)
    except ConfigError:
        return None
    return None
