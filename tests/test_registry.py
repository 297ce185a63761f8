"""Active versions in a real Redis, mirrored on disk; safe project ids; disk fallback when Redis is down."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.settings import Settings
from backend.state.redis_conn import redis_client as make_redis
from backend.state.registry import Registry, RegistryError, parse_project


@pytest.mark.parametrize(("raw", "expected"), [("12.1712586036", "12"), (12, "12"), ("0007", "7"), ("3", "3")])
def test_parse_project(raw, expected):
    assert parse_project(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "abc",
        "../1",
        "/etc/passwd",
        "1/../../x",
        "١٢",
        True,
        "-1",
        "1e3",
        "１２",
        "²",
        "1\x00",
        "12/..",
        "..",
        ".",
        "1 2",
        "12\n3",
        "\u202e12",
        "1" * 13,
        "~",
        "C:\\x",
        "12\\..\\..",
        b"12",
        1.5,
        [12],
        {"id": 12},
    ],
)
def test_parse_project_rejects(raw):
    with pytest.raises(RegistryError):
        parse_project(raw)


def test_active_version_roundtrip_through_redis_and_disk(tmp_path, redis_client, unique_name):
    registry = Registry(tmp_path, unique_name, redis_client)
    assert registry.active_version("5") == 0
    registry.version_dir("5", 1).mkdir(parents=True)
    registry.set_active("5", 1)
    assert redis_client.get(f"rubric-judge:{unique_name}:active:5") == b"1"
    assert (tmp_path / unique_name / "5" / "ACTIVE").read_text().strip() == "1"
    # another process (fresh registry) sees it
    assert Registry(tmp_path, unique_name, redis_client).active_version("5") == 1
    # a pointer set in Redis by the worker wins over this process's disk view
    registry.version_dir("5", 2).mkdir()
    redis_client.set(f"rubric-judge:{unique_name}:active:5", "2")
    assert registry.active_version("5") == 2
    with pytest.raises(RegistryError, match="does not exist"):
        registry.set_active("5", 9)
    redis_client.delete(f"rubric-judge:{unique_name}:active:5")


def test_disk_fallback_when_redis_is_down(tmp_path, unique_name):
    down = make_redis(Settings.from_env({}, redis_url="redis://127.0.0.1:1/0"))
    registry = Registry(tmp_path, unique_name, down)
    registry.version_dir("3", 1).mkdir(parents=True)
    registry.set_active("3", 1)  # disk write succeeds, Redis write is logged
    assert registry.active_version("3") == 1
    registry.remember_rubric("3", "qa-quality")
    assert registry.project_rubric("3") == "qa-quality"


def test_versions_listing_ignores_temporary_folders(tmp_path):
    registry = Registry(tmp_path, "m", None)
    for name in ("v1", "v2", ".v3.tmp-abc", "v3.partial", "notes"):
        (tmp_path / "m" / "4" / name).mkdir(parents=True)
    assert registry.version_numbers("4") == [1, 2]
    assert registry.next_version("4") == 3
    assert [v.model_version for v in registry.versions("4")] == ["m.p4.v0", "m.p4.v1", "m.p4.v2"]


def test_a_pointer_to_a_missing_version_is_ignored(tmp_path, redis_client, unique_name):
    registry = Registry(tmp_path, unique_name, redis_client)
    redis_client.set(f"rubric-judge:{unique_name}:active:6", "3")  # e.g. set by a worker with another MODEL_DIR
    assert registry.active_version("6") == 0
    registry.version_dir("6", 1).mkdir(parents=True)
    registry.set_active("6", 1)
    redis_client.set(f"rubric-judge:{unique_name}:active:6", "3")
    assert registry.active_version("6") == 1  # the disk pointer wins over a dangling Redis one
    redis_client.delete(f"rubric-judge:{unique_name}:active:6")


@settings(max_examples=300, deadline=None, database=None)
@given(raw=st.text(max_size=30) | st.integers() | st.sampled_from(["../", "/abs", "١", "12/../..", "\x00"]))
def test_no_project_id_escapes_model_dir(tmp_path_factory, raw):
    """Whatever a request names as project, the result is ASCII digits and a folder right under MODEL_DIR/<base>."""
    root = tmp_path_factory.getbasetemp() / "escape"
    registry = Registry(root, "m", None)
    try:
        project = parse_project(raw)
    except RegistryError:
        return
    assert project.isascii() and project.isdigit()
    path = registry.project_dir(project)
    assert path.parent == (root / "m").resolve()
    assert registry.version_dir(project, 3) == path / "v3"


@pytest.mark.parametrize("number", [0, -1, "1", "../1", 1.0, True])
def test_version_numbers_are_positive_integers(tmp_path, number):
    with pytest.raises(RegistryError):
        Registry(tmp_path, "m", None).version_dir("3", number)


def test_odd_folders_are_not_versions_or_projects(tmp_path):
    registry = Registry(tmp_path, "m", None)
    for name in ("v1", "v١", "v１", "v2\n", "v-1", "v01x", "v 3"):
        (tmp_path / "m" / "4" / name).mkdir(parents=True, exist_ok=True)
    for name in ("٤", "5\n", "..5", "6"):
        (tmp_path / "m" / name).mkdir(parents=True, exist_ok=True)
    assert registry.version_numbers("4") == [1]
    assert registry.projects() == ["4", "6"]


def test_remember_rubric_writes_changes_only(tmp_path, redis_client, unique_name):
    """/setup remembers the rubric before every prediction: an unchanged value is not rewritten, a change
    (and a change back) always is, on disk and in Redis."""
    registry = Registry(tmp_path, unique_name, redis_client)
    registry.remember_rubric("7", "qa-quality")
    path = registry.project_dir("7") / "RUBRIC"
    first = path.stat().st_mtime_ns
    registry.remember_rubric("7", "qa-quality")
    assert path.stat().st_mtime_ns == first
    for rubric in ("summary-quality", "qa-quality"):
        registry.remember_rubric("7", rubric)
        assert path.read_text().strip() == rubric
        assert Registry(tmp_path, unique_name, redis_client).project_rubric("7") == rubric
