"""Hypothesis fuzzing of every route: any body, any query, any XML -> never a 5xx; every 4xx says what was wrong.

The app runs with the tiny model and a real Redis (db 15, a private queue and key prefix). The number of cases
run per route is counted in ``tests.conftest.FUZZ_CASES`` and printed in pytest's terminal summary.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import Queue

from backend.core.labeling import label_config
from backend.core.rubric import load_all, load_rubric
from backend.service import Service
from backend.state.registry import Registry
from backend.state.triggers import Triggers
from backend.web.app import create_app
from support.ls_bodies import QA_DATA
from tests.conftest import FUZZ_CASES, FUZZ_STATUS

QA_XML = label_config(load_rubric("qa-quality"))
EMOTION_XML = label_config(load_rubric("emotion-ekman"))

BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">' for i in range(1, 10))
    + ']><View><Text name="t" value="&lol9;"/></View>'
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    '<View><Text name="t" value="&x;"/></View>'
)
QUADRATIC_BLOWUP = (
    '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "' + "A" * 50_000 + '">]><View>' + "&a;" * 2000 + "</View>"
)
NASTY_XML = [
    BILLION_LAUGHS,
    EXTERNAL_ENTITY,
    QUADRATIC_BLOWUP,
    "<View><Text name='x'",
    "<View></Other>",
    "",
    "   ",
    "not xml at all",
    "<" * 10_000,
    "<View>" * 5_000 + "</View>" * 5_000,
    "\x00<View/>",
    "<View/>" + "x" * 1_000_001,
    '<View><Choices name="conciseness" toName="answer"/></View>',
    QA_XML.replace("answer", "ánswer\u202e"),
    QA_XML[: len(QA_XML) // 2],
    QA_XML,
    EMOTION_XML,
]

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "12",
            "12.1712586036",
            "../../etc",
            "/etc/passwd",
            "١٢",
            "１２",
            "-1",
            "1e3",
            "12\n",
            "",
            "\u0000",
            "v1",
            "x.p12.v1",
            "9" * 40,
        ]
    )
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)
xml_value = st.sampled_from(NASTY_XML) | st.text(max_size=200) | json_value
data_value = (
    st.fixed_dictionaries(
        {},
        optional={
            "context": json_leaf | st.sampled_from([d["context"] for d in QA_DATA]),
            "question": json_leaf | st.sampled_from([d["question"] for d in QA_DATA]),
            "answer": json_leaf | st.sampled_from(["x" * 200_000, "é" * 1000, "\U0001f600" * 500]),
            "text": json_leaf,
        },
    )
    | json_value
)
task = st.fixed_dictionaries({}, optional={"id": json_leaf, "data": data_value, "meta": json_value})
tasks = st.lists(task, max_size=6) | json_value
project = json_leaf | json_value

BODIES = {
    "/predict": st.fixed_dictionaries(
        {}, optional={"tasks": tasks, "project": project, "label_config": xml_value, "params": json_value}
    ),
    "/setup": st.fixed_dictionaries(
        {},
        optional={
            "project": project,
            "schema": xml_value,
            "hostname": json_leaf,
            "access_token": json_leaf,
            "extra_params": json_value | st.fixed_dictionaries({"rubric": json_leaf}),
        },
    ),
    "/webhook": st.fixed_dictionaries(
        {},
        optional={
            "action": json_leaf
            | st.sampled_from(
                ["START_TRAINING", "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED", "TASKS_CREATED"]
            ),
            "project": project | st.fixed_dictionaries({"id": project}),
            "annotation": json_value | st.fixed_dictionaries({"project": project}),
            "annotations": json_value,
        },
    ),
    "/versions/activate": st.fixed_dictionaries({}, optional={"project": project, "version": json_leaf}),
}


@pytest.fixture(scope="module")
def fuzz_app(tiny_model_dir, tmp_path_factory):
    """One app for the whole module (hypothesis calls the test many times): tiny model, real Redis."""
    from redis import Redis

    from backend.model.judge import Judge
    from backend.settings import Settings
    from tests.conftest import REDIS_URL, REPO

    s = Settings.from_env(
        {},
        base_model=str(tiny_model_dir),
        model_dir=tmp_path_factory.mktemp("fuzz-models"),
        rubric_dir=REPO / "rubric_configs",
        redis_url=REDIS_URL,
        predict_batch_size=8,
        max_input_tokens=256,
        train_min_new_annotations=1_000_000,
        queue_name=f"rj-fuzz-{uuid.uuid4().hex[:8]}",
        prefill_unevaluated=True,  # v0 pre-fills, so that a huge task's answer shows it was scored whole
    )
    redis = Redis.from_url(REDIS_URL)
    base = f"fuzz-{uuid.uuid4().hex[:8]}"
    judge = Judge.from_settings(s)
    registry = Registry(s.model_dir, base, redis)
    (registry.version_dir("12", 1)).mkdir(parents=True)  # a version that exists, so activate can succeed
    service = Service(s, judge, registry, load_all(s.rubric_dir), triggers=Triggers(redis, base, s.queue_name))
    yield create_app(s, service).test_client()
    for key in redis.scan_iter(f"rubric-judge:{base}:*"):
        redis.delete(key)
    queue = Queue(s.queue_name, connection=redis)
    for job_id in queue.job_ids:
        job = queue.fetch_job(job_id)
        if job:
            job.delete()
    queue.delete(delete_jobs=True)


def check(response: Any, route: str) -> None:
    """No 5xx (503 only where the queue is unreachable, which it is not here); 4xx is JSON naming the problem."""
    FUZZ_CASES[route] += 1
    FUZZ_STATUS[response.status_code] += 1
    assert response.status_code < 500, (route, response.status_code, response.get_data(as_text=True)[:500])
    if response.status_code >= 400:
        body = response.get_json()
        assert isinstance(body, dict) and body["status"] == response.status_code
        assert isinstance(body["error"], str) and len(body["error"]) > 10, body
        assert "internal error" not in body["error"]


FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@pytest.mark.parametrize("route", sorted(BODIES))
@FUZZ
@given(data=st.data())
def test_fuzz_json_bodies(fuzz_app, route, data):
    body = data.draw(BODIES[route])
    response = fuzz_app.post(route, data=json.dumps(body), content_type="application/json")
    check(response, route)
    if route == "/predict" and response.status_code == 200:
        assert len(response.get_json()["results"]) == len(body["tasks"])


@pytest.mark.parametrize("route", ["/predict", "/setup", "/webhook", "/versions/activate"])
@settings(FUZZ, max_examples=60)
@given(
    raw=st.binary(max_size=300)
    | st.text(max_size=300).map(str.encode)
    | st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe", b"null", b"1e99999", b'"x"', b"{}"]),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded"]),
)
def test_fuzz_raw_bodies(fuzz_app, route, raw, content_type):
    check(fuzz_app.post(route, data=raw, content_type=content_type), route + " (raw)")


@settings(FUZZ, max_examples=150)
@given(
    name=st.text(min_size=1, max_size=60)
    | st.sampled_from(
        ["..", "../../etc/passwd", "%2e%2e%2f", "12.json", "١٢.json", "/etc/passwd", "12\x00", "9" * 50, ".json"]
    )
)
def test_fuzz_reports(fuzz_app, name):
    from urllib.parse import quote

    response = fuzz_app.get("/reports/" + quote(name, safe=""))
    check(response, "/reports")
    if name.startswith("/") and response.status_code == 308:
        # "/reports//0": werkzeug merges the doubled slash and redirects, within /reports (as before issue 23)
        assert response.headers["Location"].startswith("http://localhost/reports/"), response.headers["Location"]
        return
    assert response.status_code in (400, 404), response.status_code  # no project here has training runs


@settings(FUZZ, max_examples=150)
@given(
    project=st.text(max_size=40) | st.sampled_from(["12", "../12", "١٢", "12.5", "9" * 40]),
    route=st.sampled_from(["/versions", "/status"]),
)
def test_fuzz_query_strings(fuzz_app, project, route):
    response = fuzz_app.get(route, query_string={"project": project})
    check(response, route)
    if response.status_code == 200 and route == "/versions":
        assert all(v.split(".p", 1)[1].split(".")[0].isascii() for v in response.get_json()["versions"])


@pytest.mark.parametrize(
    "xml", [BILLION_LAUGHS, EXTERNAL_ENTITY, QUADRATIC_BLOWUP], ids=["billion-laughs", "external", "quadratic"]
)
@pytest.mark.parametrize("route", ["/setup", "/predict"])
def test_entity_bombs_are_refused_not_expanded(fuzz_app, xml, route):
    key = "schema" if route == "/setup" else "label_config"
    body = {key: xml, "project": "12", "tasks": [{"data": QA_DATA[0]}]}
    response = fuzz_app.post(route, json=body)
    assert response.status_code == 400
    assert "forbidden XML" in response.get_json()["error"]


def test_thousands_of_tasks(fuzz_app):
    many = [{"id": i, "data": {"context": "c"}} for i in range(5000)]  # fields missing: no scoring, fast
    response = fuzz_app.post("/predict", json={"tasks": many, "label_config": QA_XML, "project": "12"})
    assert response.status_code == 200
    assert len(response.get_json()["results"]) == 5000
    too_many = fuzz_app.post("/predict", json={"tasks": [{"data": {}}] * 10_001})
    assert too_many.status_code == 413 and "MAX_TASKS_PER_REQUEST" in too_many.get_json()["error"]


def test_huge_strings_are_trimmed_and_scored(fuzz_app):
    data = {"context": "c " * 300_000, "question": "q?", "answer": "\U0001f600" * 100_000}
    response = fuzz_app.post("/predict", json={"tasks": [{"data": data}], "label_config": QA_XML})
    assert response.status_code == 200
    assert len(response.get_json()["results"][0]["result"]) == len(load_rubric("qa-quality").dimensions)
