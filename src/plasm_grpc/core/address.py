"""Network addresses as text."""

from __future__ import annotations


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (`[::1]:7946`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
