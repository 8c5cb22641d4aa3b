"""docs/architecture.md and its diagram stay true to the package tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "src" / "plasm_grpc"
ARCHITECTURE = DOCS / "architecture.md"
DIAGRAM_SOURCE = DOCS / "architecture-diagram.dot"

# Markdown links and images: [text](target) and ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def packages() -> list[str]:
    """Every package directory under src/plasm_grpc, as `core/dht/`."""
    return sorted(
        f"{init.parent.relative_to(PACKAGE).as_posix()}/"
        for init in PACKAGE.rglob("__init__.py")
        if init.parent != PACKAGE
    )


def test_there_are_packages_to_check() -> None:
    assert {"core/", "core/dht/", "net/", "cli/"} <= set(packages())


@pytest.mark.parametrize("path", [ARCHITECTURE, DIAGRAM_SOURCE], ids=lambda p: p.name)
def test_every_package_is_named(path: Path) -> None:
    text = path.read_text()
    missing = [name for name in packages() if name not in text]
    assert not missing, f"{path.name} does not name {missing}"


@pytest.mark.parametrize("path", [ARCHITECTURE, ROOT / "README.md"], ids=lambda p: p.name)
def test_every_local_link_exists(path: Path) -> None:
    targets = [t.split("#")[0] for t in LINK.findall(path.read_text())]
    local = [t for t in targets if t and not re.match(r"[a-z]+:", t)]
    missing = [t for t in local if not (path.parent / t).exists()]
    assert not missing, f"{path.name} links to missing {missing}"


def test_the_page_shows_the_diagram_and_readme_links_the_page() -> None:
    assert "architecture-diagram.png" in LINK.findall(ARCHITECTURE.read_text())
    assert "docs/architecture.md" in LINK.findall((ROOT / "README.md").read_text())
