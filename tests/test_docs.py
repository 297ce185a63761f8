"""The docs say what the code does: the settings table of docs/configuration.md against ``Settings``, the
constants docs/architecture.md quotes against the modules that define them, the module map against the tree."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from backend.settings import Settings
from tests.conftest import REPO

DOCS = REPO / "docs"
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \| ([^|]+) \|", re.M)
ALIASES = {"LABEL_STUDIO_ACCESS_TOKEN"}  # read by Settings.from_env, not a field of its own


def documented() -> dict[str, str]:
    return {name: default.strip() for name, default in ROW.findall((DOCS / "configuration.md").read_text())}


def shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


def test_every_setting_is_documented_and_every_documented_setting_exists():
    variables = {f.name.upper() for f in fields(Settings)}
    table = documented()
    assert variables - set(table) == set(), "settings missing from docs/configuration.md"
    assert set(table) - variables - ALIASES == set(), "docs/configuration.md lists settings that do not exist"


@pytest.mark.parametrize(
    "field", [f for f in fields(Settings) if f.name not in ("model_dir", "rubric_dir")], ids=lambda f: f.name.upper()
)
def test_documented_defaults_are_the_defaults(field):
    default = getattr(Settings(), field.name)
    text = documented()[field.name.upper()]
    if default == "":
        assert text == "empty", text
        return
    quoted = re.match(r"`([^`]*)`", text)
    assert quoted, text
    assert quoted.group(1) in (shown(default), str(default)), (quoted.group(1), default)


def test_constants_quoted_in_the_architecture_page():
    from backend.state import serving, triggers

    page = (DOCS / "architecture.md").read_text()
    assert f"TTL {triggers.RUNNING_TTL_S} s" in page and f"every {triggers.HEARTBEAT_S} s" in page
    scripts = [
        name
        for name in vars(triggers)
        if re.fullmatch(r"_[A-Z_]+", name)
        and isinstance(getattr(triggers, name), str)
        and "redis.call" in getattr(triggers, name)
    ]
    words = {4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
    assert f"{words[len(scripts)]} Lua scripts" in page, scripts
    assert f"lapses {serving.MARK_TTL_S:g} s" in page and f"renewed every {serving.REFRESH_S:g} s" in page


def test_the_module_map_names_every_module():
    page = (DOCS / "architecture.md").read_text()
    modules = sorted(
        str(p.relative_to(REPO))
        for package in ("backend", "worker", "rubric_judge")
        for p in (REPO / package).rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    )
    missing = [m for m in modules if f"`{m}`" not in page]
    assert missing == [], f"docs/architecture.md does not describe {missing}"
    named = set(re.findall(r"`((?:backend|worker|rubric_judge)/(?:[a-z_]+/)?[a-z_]+\.py)`", page))
    assert named - set(modules) == set(), f"docs/architecture.md names modules that do not exist: {named}"


def test_docs_link_only_to_files_that_exist():
    for page in [*DOCS.glob("*.md"), REPO / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"


def test_no_doc_mentions_a_module_path_that_moved():
    pages = [*DOCS.glob("*.md"), REPO / "README.md", *Path(REPO / "benchmarks").glob("*.md")]
    text = "".join(p.read_text() for p in pages)
    for gone in ("backend/cli.py", "backend.cli", "app.redis_client", "worker.jobs.run_training"):
        assert gone not in text, gone
