"""Protocol conformance through Flask's test client, replaying Label Studio 1.23.2 request bodies."""

from __future__ import annotations

import base64
import json

import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.core.labeling import label_config
from backend.core.rubric import load_all, load_rubric
from backend.service import Service
from backend.state.registry import Registry
from backend.web.app import create_app
from support.ls_bodies import QA_DATA, ls_task, predict_body, setup_body

QA_XML = label_config(load_rubric("qa-quality"))


def make_client(settings, tiny_judge, redis_client=None, **overrides):
    settings = settings.with_overrides(**overrides) if overrides else settings
    registry = Registry(settings.model_dir, tiny_judge.base_name, redis_client)
    service = Service(settings, tiny_judge, registry, load_all(settings.rubric_dir))
    app = create_app(settings, service)
    return app.test_client(), registry


@pytest.fixture
def client(settings, tiny_judge):
    return make_client(settings, tiny_judge)[0]


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "UP"
    assert response.get_json()["model_loaded"] is True


def test_setup_returns_v0_version_and_rubric(client, tiny_judge):
    response = client.post("/setup", json=setup_body(QA_XML))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["model_version"] == f"{tiny_judge.base_name}.p12.v0"
    assert body["rubric"] == "qa-quality"


@pytest.mark.parametrize("name", ["qa-quality", "summary-quality", "emotion-ekman"])
def test_setup_matches_rubric_from_config(client, name):
    xml = label_config(load_rubric(name))
    assert client.post("/setup", json=setup_body(xml)).get_json()["rubric"] == name


def test_setup_extra_params_rubric(client):
    xml = label_config(load_rubric("summary-quality"))
    ok = client.post("/setup", json=setup_body(xml, extra_params={"rubric": "summary-quality"}))
    assert ok.status_code == 200
    unknown = client.post("/setup", json=setup_body(xml, extra_params={"rubric": "nope"}))
    assert unknown.status_code == 400
    assert "nope" in unknown.get_json()["error"] and "qa-quality" in unknown.get_json()["error"]
    mismatch = client.post("/setup", json=setup_body(xml, extra_params={"rubric": "qa-quality"}))
    assert mismatch.status_code == 422
    assert "conciseness" in mismatch.get_json()["error"]


def test_setup_names_what_the_config_lacks(client):
    xml = QA_XML.replace('<Choice value="-2" hint="very wordy or redundant"/>', "")
    response = client.post("/setup", json=setup_body(xml, extra_params={"rubric": "qa-quality"}))
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert "conciseness" in error and "-2" in error


def test_setup_rejects_bad_xml(client):
    response = client.post("/setup", json=setup_body("<View><Text name='x'"))
    assert response.status_code == 400
    assert "XML" in response.get_json()["error"]


def test_predict_n_tasks_in_order_and_versions_agree(client, tiny_judge):
    version = client.post("/setup", json=setup_body(QA_XML)).get_json()["model_version"]
    tasks = [ls_task(100 + i, d) for i, d in enumerate(QA_DATA * 3)]
    response = client.post("/predict", json=predict_body(tasks, QA_XML))
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert len(results) == len(tasks)
    interface = LabelInterface(QA_XML)
    rubric = load_rubric("qa-quality")
    direct = tiny_judge.score(rubric, QA_DATA * 3)
    for item, expected in zip(results, direct, strict=True):
        assert item["model_version"] == version
        assert [r["from_name"] for r in item["result"]] == list(rubric.dimension_names)
        assert all(r["to_name"] == "answer" and r["type"] == "choices" for r in item["result"])
        assert {r["from_name"]: r["value"]["choices"][0] for r in item["result"]} == expected.labels
        assert 0 < item["score"] <= 1
        assert interface.validate_prediction(item, return_errors=True) == []


def test_predict_task_missing_a_field_gets_empty_result(client):
    tasks = [
        ls_task(1, QA_DATA[0]),
        ls_task(2, {"context": "c", "question": "q"}),
        ls_task(3, {**QA_DATA[1], "answer": None}),
        ls_task(4, QA_DATA[2]),
    ]
    results = client.post("/predict", json=predict_body(tasks, QA_XML)).get_json()["results"]
    assert len(results) == 4
    assert results[1]["result"] == [] and results[1]["score"] == 0
    assert results[2]["result"] == [] and results[2]["score"] == 0
    assert len(results[0]["result"]) == 6 and len(results[3]["result"]) == 6


def test_predict_uses_the_configs_data_keys(client):
    xml = QA_XML.replace('value="$answer"', 'value="$response"')
    data = {"context": "c", "question": "q", "response": "r"}
    results = client.post("/predict", json=predict_body([ls_task(1, data)], xml)).get_json()["results"]
    assert len(results[0]["result"]) == 6


def test_predict_emotion(client):
    xml = label_config(load_rubric("emotion-ekman"))
    tasks = [ls_task(i, {"text": t}) for i, t in enumerate(["I love it!", "This is awful.", "Oh wow."])]
    results = client.post("/predict", json=predict_body(tasks, xml)).get_json()["results"]
    interface = LabelInterface(xml)
    for item in results:
        assert item["result"][0]["from_name"] == "emotion" and item["result"][0]["to_name"] == "text"
        assert interface.validate_prediction(item, return_errors=True) == []


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "expected a JSON object"),
        (b'{"project": "1.1"}', 400, "missing 'tasks'"),
        (b'{"tasks": {"id": 1}}', 400, "must be a list"),
        (b'{"tasks": []}', 400, "empty"),
        (b'{"tasks": [1]}', 400, "tasks[0] must be an object"),
        (b'{"tasks": [{"id": 1}]}', 400, "tasks[0] has no 'data'"),
        (b'{"tasks": [{"data": "x"}]}', 400, "tasks[0].data must be an object"),
        (b'{"tasks": [{"data": {}}], "project": "abc"}', 400, "not a number"),
        (b'{"tasks": [{"data": {}}], "label_config": 5}', 400, "must be a string"),
        (b'{"tasks": [{"data": {}}], "project": "../../etc"}', 400, "not a number"),
        (b"[" * 5000 + b"]" * 5000, 400, "JSON"),
    ],
)
def test_predict_bad_requests(client, body, status, fragment):
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == status
    assert fragment in response.get_json()["error"]


def test_predict_deeply_nested_object_is_rejected(client):
    nested: object = "x"
    for _ in range(200):
        nested = {"a": nested}
    body = {"tasks": [{"data": {"context": nested}}]}
    response = client.post("/predict", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400 and "nested" in response.get_json()["error"]


def test_body_over_limit_is_413(settings, tiny_judge):
    client, _ = make_client(settings, tiny_judge, max_request_bytes=2000)
    tasks = [ls_task(i, QA_DATA[0]) for i in range(20)]
    response = client.post("/predict", json=predict_body(tasks, QA_XML))
    assert response.status_code == 413
    assert "MAX_REQUEST_BYTES" in response.get_json()["error"]


def test_too_many_tasks_is_413(settings, tiny_judge):
    client, _ = make_client(settings, tiny_judge, max_tasks_per_request=2)
    tasks = [ls_task(i, QA_DATA[0]) for i in range(3)]
    response = client.post("/predict", json=predict_body(tasks, QA_XML))
    assert response.status_code == 413 and "MAX_TASKS_PER_REQUEST" in response.get_json()["error"]


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ROUTES = [
    ("get", "/"),
    ("get", "/health"),
    ("post", "/setup"),
    ("post", "/predict"),
    ("get", "/versions"),
    ("post", "/versions/activate"),
    ("post", "/webhook"),
    ("get", "/status"),
    ("get", "/reports"),
    ("get", "/reports/12"),
    ("get", "/reports/12.json"),
    ("get", "/metrics"),
    ("post", "/prelabel"),
    ("get", "/jobs/12"),
    ("get", "/reports/12/queue"),
]


def test_the_auth_test_covers_every_route(client):
    rules = {
        rule.rule.replace("<name>", "12").replace("<job_id>", "12")
        for rule in client.application.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    assert rules <= {path for _, path in ROUTES}, "a route was added: add it to ROUTES"


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_basic_auth_on_every_route(settings, tiny_judge, route, caplog):
    client, _ = make_client(
        settings, tiny_judge, basic_auth_user="ls", basic_auth_pass="s3cret", webhook_secret="hook-secret-42"
    )
    method, path = route
    caplog.set_level("DEBUG")
    missing = getattr(client, method)(path)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Basic")
    for headers in (
        _basic("ls", "wrong"),
        _basic("wrong", "s3cret"),
        _basic("", ""),
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "Basic !!notbase64"},
        {"Authorization": "Basic " + base64.b64encode(b"ls").decode()},
        {"X-Webhook-Secret": "hook-secret-4"},
        {"X-Webhook-Secret": "hook-secret-42x"},
    ):
        wrong = getattr(client, method)(path, headers=headers)
        assert wrong.status_code == 401, headers
        assert "s3cret" not in wrong.get_data(as_text=True) and "hook-secret" not in wrong.get_data(as_text=True)
    good = getattr(client, method)(path, headers=_basic("ls", "s3cret"), json={})
    assert good.status_code != 401
    assert "s3cret" not in caplog.text and "hook-secret" not in caplog.text


def test_webhook_secret_alone_protects_the_webhook(settings, tiny_judge):
    """WEBHOOK_SECRET without basic auth: /webhook still refuses callers without the secret."""
    client, _ = make_client(settings, tiny_judge, webhook_secret="hook-secret-42")
    body = {"action": "TASKS_CREATED", "project": {"id": 1}}
    assert client.post("/webhook", json=body).status_code == 401
    wrong = client.post("/webhook", json=body, headers={"X-Webhook-Secret": "hook-secret-4"})
    assert wrong.status_code == 401 and "X-Webhook-Secret" in wrong.get_json()["error"]
    assert "hook-secret-42" not in wrong.get_data(as_text=True)
    assert client.post("/webhook", json=body, headers={"X-Webhook-Secret": "hook-secret-42"}).status_code == 200
    assert client.post("/webhook", json=body, headers={"X-Webhook-Secret": "h\u00e9"}).status_code == 401


def test_credentials_are_compared_in_constant_time(monkeypatch, settings, tiny_judge):
    """Every credential check goes through hmac.compare_digest, both user and password, even when one is wrong."""
    import hmac

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    client, _ = make_client(
        settings, tiny_judge, basic_auth_user="ls", basic_auth_pass="s3cret", webhook_secret="hook-secret-42"
    )
    assert client.get("/versions", headers=_basic("nobody", "s3cret")).status_code == 401
    assert [b for _, b in calls] == [b"ls", b"s3cret"]
    calls.clear()
    assert client.post("/webhook", json={}, headers={"X-Webhook-Secret": "nope"}).status_code == 401
    assert [b for _, b in calls] == [b"hook-secret-42"]  # no basic auth sent: nothing else to compare


def test_versions_and_active_adapter_version(settings, tiny_judge, redis_client, unique_name):
    client, registry = make_client(settings, tiny_judge, redis_client)
    registry.base_name = unique_name
    (registry.version_dir("12", 1)).mkdir(parents=True)
    (registry.version_dir("12", 1) / "metrics.json").write_text(
        json.dumps({"alpha_flat": 0.5, "candidate": {"alpha_dims": 0.25, "alpha_flat": 0.5}})
    )
    versions = client.get("/versions").get_json()
    assert versions["versions"] == [f"{unique_name}.p12.v0", f"{unique_name}.p12.v1"]
    assert versions["details"][1]["alpha"] == 0.25 and versions["details"][1]["alpha_flat"] == 0.5
    assert versions["details"][0]["active"] is True
    redis_client.delete(f"rubric-judge:{unique_name}:active:12")


def test_unknown_route_is_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404 and response.get_json()["status"] == 404
