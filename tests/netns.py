"""Network namespaces for NAT tests: a public network and private LANs behind NATs.

`nat_topology()` builds, with a random suffix in every name so parallel runs
do not collide::

    public ns  (bridge br0, 10.77.0.0/24; the "internet")
      10.77.0.1 public host(s) ............ veth in the public ns itself
      10.77.0.1X router X's public side ... nat ns X: masquerade to 10.77.0.0/24
                                            LAN 10.78.X.1/24 -> private ns X
      10.78.X.2 private host X ............ default route via 10.78.X.1

Each router namespace forwards and masquerades (nftables, ``ip saddr
10.78.X.0/24 oifname <pub> masquerade``); nothing routes 10.78.0.0/16 from the
public namespace, so a private host is unreachable unless it sent first (and
then only from the exact peer it sent to: Linux conntrack filters by the full
5-tuple). The mapping is endpoint-independent ("cone"-like): masquerade keeps
the private source port when it is free, so one socket shows the same public
``ip:port`` to every destination, and two private hosts can UDP hole-punch.
The router drops unsolicited datagrams from the public side before conntrack
records them, as a home router does: a conntrack entry left by a peer's early
punch would otherwise hold the very external port the private host's own
punch is about to map, and the NAT would pick another one.

``nat_topology(nats, symmetric={X, ...})`` makes router X a *symmetric* NAT
instead (``Nat.symmetric``): ``masquerade fully-random`` picks a fresh random
external port for every new flow, so one socket shows a different public port
to each destination (each destination host and each destination port), and
the address an echo server reports is useless to any other peer.
(``masquerade random`` maps per destination too, from a keyed hash of the
flow; plain ``masquerade`` keeps the source port whenever it can.)

Everything is created and torn down with ``ip`` and ``nft``; the context
manager removes every namespace it created even when a step fails (deleting a
namespace deletes its veths, bridge and nft tables with it). Needs root,
iproute2 and nftables.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

CMD_TIMEOUT_S = 20.0

PUBLIC_HOST = "10.77.0.1"


class NetnsError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    return [tool for tool in ("ip", "nft") if shutil.which(tool) is None]


def run(argv: Sequence[str], *, input_text: str | None = None) -> str:
    """Run a command in the host namespace; raise NetnsError with its stderr on failure."""
    proc = subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run_in(ns: str, argv: Sequence[str], *, input_text: str | None = None) -> str:
    """Run `argv` inside namespace `ns` (bounded); its stdout."""
    return run(ns_argv(ns, argv), input_text=input_text)


def popen_in(ns: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start `argv` inside namespace `ns`; the caller stops it."""
    return subprocess.Popen(ns_argv(ns, argv), **kwargs)  # type: ignore[call-overload,no-any-return]


@dataclass(slots=True)
class Nat:
    """One NAT: its router namespace, the private namespace behind it, their addresses."""

    index: int
    router: str
    private: str
    public_ip: str  # the router's address on the public network
    private_ip: str  # the private host's address on the LAN
    lan: str  # the LAN's prefix, 10.78.X.0/24
    symmetric: bool = False  # a fresh external port per destination (masquerade fully-random)


@dataclass(slots=True)
class Topology:
    suffix: str
    public: str
    public_ip: str
    nats: list[Nat] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)


def _add_ns(topo: Topology, name: str) -> None:
    run(["ip", "netns", "add", name])
    topo.namespaces.append(name)
    run_in(name, ["ip", "link", "set", "lo", "up"])


def _build(topo: Topology, nats: int, symmetric: frozenset[int]) -> None:
    s = topo.suffix
    _add_ns(topo, topo.public)
    pub = topo.public
    run_in(pub, ["ip", "link", "add", "br0", "type", "bridge"])
    run_in(pub, ["ip", "link", "set", "br0", "up"])
    run_in(pub, ["ip", "addr", "add", f"{topo.public_ip}/24", "dev", "br0"])
    for x in range(1, nats + 1):
        router, private = f"pn{s}r{x}", f"pn{s}h{x}"
        nat = Nat(
            index=x,
            router=router,
            private=private,
            public_ip=f"10.77.0.{10 + x}",
            private_ip=f"10.78.{x}.2",
            lan=f"10.78.{x}.0/24",
            symmetric=x in symmetric,
        )
        masquerade = "masquerade fully-random" if nat.symmetric else "masquerade"
        _add_ns(topo, router)
        _add_ns(topo, private)
        # Router's public side: a veth whose peer is a bridge port in the public ns.
        run(["ip", "link", "add", f"pw{s}{x}", "type", "veth", "peer", "name", f"pb{s}{x}"])
        run(["ip", "link", "set", f"pw{s}{x}", "netns", router, "name", "wan"])
        run(["ip", "link", "set", f"pb{s}{x}", "netns", pub, "name", f"port{x}"])
        run_in(pub, ["ip", "link", "set", f"port{x}", "master", "br0", "up"])
        run_in(router, ["ip", "addr", "add", f"{nat.public_ip}/24", "dev", "wan"])
        run_in(router, ["ip", "link", "set", "wan", "up"])
        # The LAN between the router and the private host.
        run(["ip", "link", "add", f"pl{s}{x}", "type", "veth", "peer", "name", f"ph{s}{x}"])
        run(["ip", "link", "set", f"pl{s}{x}", "netns", router, "name", "lan"])
        run(["ip", "link", "set", f"ph{s}{x}", "netns", private, "name", "eth0"])
        run_in(router, ["ip", "addr", "add", f"10.78.{x}.1/24", "dev", "lan"])
        run_in(router, ["ip", "link", "set", "lan", "up"])
        run_in(private, ["ip", "addr", "add", f"{nat.private_ip}/24", "dev", "eth0"])
        run_in(private, ["ip", "link", "set", "eth0", "up"])
        run_in(private, ["ip", "route", "add", "default", "via", f"10.78.{x}.1"])
        run_in(router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        run_in(
            router,
            ["nft", "-f", "-"],
            input_text=(
                "table ip nat {\n"
                "  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n"
                f'    ip saddr {nat.lan} oifname "wan" {masquerade}\n'
                "  }\n"
                "}\n"
                "table ip filter {\n"
                "  chain forward {\n"
                "    type filter hook forward priority filter; policy drop;\n"
                "    ct state established,related accept\n"
                f'    iifname "lan" ip saddr {nat.lan} accept\n'
                "  }\n"
                # Unsolicited datagrams from the internet are dropped here, before
                # conntrack confirms them: otherwise the entry they leave (30 s)
                # holds the external port a hole punch is about to map.
                "  chain input {\n"
                "    type filter hook input priority filter; policy accept;\n"
                '    iifname "wan" ct state new drop\n'
                "  }\n"
                "}\n"
            ),
        )
        topo.nats.append(nat)


def _teardown(topo: Topology) -> list[str]:
    problems: list[str] = []
    for name in reversed(topo.namespaces):
        try:
            run(["ip", "netns", "del", name])
        except (NetnsError, subprocess.TimeoutExpired) as err:
            problems.append(str(err))
    # Veths not yet moved into a namespace (a failure mid-step) live in the host ns.
    for prefix in ("pw", "pb", "pl", "ph"):
        for x in range(1, 10):
            with contextlib.suppress(NetnsError, subprocess.TimeoutExpired):
                if run(["ip", "-o", "link", "show", f"{prefix}{topo.suffix}{x}"]):
                    run(["ip", "link", "del", f"{prefix}{topo.suffix}{x}"])
    return problems


@contextlib.contextmanager
def nat_topology(nats: int = 2, symmetric: Collection[int] = ()) -> Iterator[Topology]:
    """A public namespace and `nats` NATed private namespaces; removed on exit.

    `symmetric` holds the (1-based) indexes of the NATs that map every
    destination to its own external port; the others are cone-like.
    """
    if not 1 <= nats <= 9:
        raise ValueError("1..9 NATs")
    chosen = frozenset(symmetric)
    if not chosen <= set(range(1, nats + 1)):
        raise ValueError(f"symmetric NAT indexes must be in 1..{nats}: {sorted(chosen)}")
    suffix = secrets.token_hex(3)
    topo = Topology(suffix=suffix, public=f"pn{suffix}p", public_ip=PUBLIC_HOST)
    try:
        _build(topo, nats, chosen)
        yield topo
    finally:
        problems = _teardown(topo)
        if problems:
            raise NetnsError("teardown: " + "; ".join(problems))


def namespaces() -> set[str]:
    """The names of every network namespace on the host."""
    return {line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line}
