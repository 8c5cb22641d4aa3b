"""The console's page and assets, shipped as package data and read once.

Only the files in `static/` are served, by exact name: a request names an
entry of a table, never a path on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Final

_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    data: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class StaticFiles:
    assets: dict[str, Asset]

    @classmethod
    def load(cls) -> StaticFiles:
        root = resources.files("plasm_grpc.console") / "static"
        assets = {}
        for entry in root.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in _CONTENT_TYPES:
                assets[entry.name] = Asset(entry.read_bytes(), _CONTENT_TYPES[suffix])
        return cls(assets)

    def get(self, name: str) -> Asset | None:
        return self.assets.get(name)
