"""The README names only commands, modules and paths that exist, and the figures on the
performance page are rendered from the committed results (`make docs` is up to date)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from bench import docs

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))


def test_every_make_target_the_readme_names_exists() -> None:
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", README))
    assert named, "the README names its make targets"
    assert not named - _targets(), f"not in the Makefile: {sorted(named - _targets())}"


def test_every_python_module_the_pages_name_exists() -> None:
    for page in PAGES:
        for module in set(re.findall(r"python -m ([a-z_][\w.]*)", page.read_text())):
            if module in {"pip", "venv", "pytest"}:
                continue
            assert importlib.util.find_spec(module) is not None, f"{page.name}: {module}"


def _linked_paths(page: Path) -> set[str]:
    text = page.read_text()
    links = {
        target.split("#")[0]
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not target.startswith(("http://", "https://", "mailto:", "#"))
    }
    # Backticked repository paths: they start with a top-level folder of the repository.
    top = {entry.name for entry in ROOT.iterdir() if entry.is_dir() and entry.name[0] != "."}
    quoted = {
        token.rstrip("/")
        for token in re.findall(r"`([\w./-]+)`", text)
        if token.split("/")[0] in top and "/" in token and "..." not in token
    }
    return {link for link in links | quoted if link}


def test_every_path_the_pages_link_or_quote_exists() -> None:
    missing = []
    for page in PAGES:
        for path in _linked_paths(page):
            base = page.parent if (page.parent / path).exists() else ROOT
            if not (base / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, "\n".join(sorted(missing))


@pytest.mark.parametrize("path", [docs.PAGE, docs.README, docs.SERVING], ids=lambda p: p.name)
def test_each_rendered_page_is_current(path: Path) -> None:
    """The results blocks match the committed results; the settings and endpoints blocks
    match the settings classes and the OpenAPI document."""
    page = path.read_text()
    assert docs.BLOCK.search(page), "the page has rendered blocks"
    assert docs.render_page(page) == page, f"run `make docs`: {path.name} differs from its sources"
