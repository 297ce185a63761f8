"""Serving first (backend.state.serving): the backend's mark in a real Redis, the worker's gate, the layer hooks."""

from __future__ import annotations

import os
import threading
import time

import pytest

from backend.state.serving import MARK_TTL_S, ServingGate, ServingMark, decoder_layers, pause_hooks, serving_key


@pytest.fixture
def base(redis_client, unique_name):
    yield unique_name
    redis_client.delete(serving_key(unique_name))


def test_the_mark_is_up_exactly_while_scoring(redis_client, base):
    mark = ServingMark(redis_client, base, host="host-a")
    gate = ServingGate(redis_client, base, "always", host="host-b")
    assert not gate.serving()
    with mark.scoring():
        assert gate.serving()
        with mark.scoring():  # nested calls from other request threads
            assert gate.serving()
        assert gate.serving()  # one call still runs
    assert not gate.serving()
    assert redis_client.zcard(serving_key(base)) == 0


def test_auto_counts_only_a_backend_of_the_same_host(redis_client, base):
    redis_client.zadd(serving_key(base), {"other-host|1": time.time() + MARK_TTL_S})  # a backend process, pid 1
    assert not ServingGate(redis_client, base, "auto", host="this-host").serving()
    assert ServingGate(redis_client, base, "auto", host="other-host").serving()
    assert ServingGate(redis_client, base, "always", host="this-host").serving()
    assert not ServingGate(redis_client, base, "never", host="other-host").serving()


def test_a_gate_never_waits_for_its_own_process(redis_client, base):
    with ServingMark(redis_client, base, host="h").scoring():  # same host and pid as the gate
        assert not ServingGate(redis_client, base, "always", host="h").serving()


def test_a_dead_backend_s_mark_lapses(redis_client, base):
    redis_client.zadd(serving_key(base), {"host-a|1": time.time() - 0.1})  # its last renewal ran out
    assert not ServingGate(redis_client, base, "always", host="host-b").serving()
    redis_client.zadd(serving_key(base), {"host-a|1": time.time() + MARK_TTL_S})
    assert ServingGate(redis_client, base, "always", host="host-b").serving()


def test_the_mark_is_renewed_while_a_long_call_runs(redis_client, base):
    clock = [1000.0]
    mark = ServingMark(redis_client, base, host="host-a", clock=lambda: clock[0])
    with mark.scoring():
        first = redis_client.zscore(serving_key(base), mark.member)
        clock[0] += 30  # the call is still running 30 s later
        deadline = time.monotonic() + 5
        while redis_client.zscore(serving_key(base), mark.member) == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert redis_client.zscore(serving_key(base), mark.member) == pytest.approx(1030.0 + MARK_TTL_S)


def test_the_gate_waits_until_the_backend_is_done(redis_client, base):
    mark = ServingMark(redis_client, base, host="host-a")
    gate = ServingGate(redis_client, base, "always", host="host-b", poll_s=0.02)
    order: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def backend() -> None:
        with mark.scoring():
            inside.set()
            release.wait(10)
            order.append("backend done")

    thread = threading.Thread(target=backend)
    thread.start()
    inside.wait(5)
    waiter = threading.Thread(target=lambda: (gate.wait(), order.append("training resumed")))
    waiter.start()
    time.sleep(0.2)
    assert order == []  # still paused
    release.set()
    thread.join(5)
    waiter.join(5)
    assert order == ["backend done", "training resumed"]
    assert gate.pauses == 1 and gate.paused_s > 0


def test_a_backend_that_never_idles_cannot_stop_training(redis_client, base):
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    redis_client.zadd(serving_key(base), {"host-a|1": time.time() + 60})
    gate = ServingGate(
        redis_client, base, "always", host="host-b", max_pause_s=10, poll_s=1, sleep=sleep, timer=lambda: clock[0]
    )
    waited = gate.wait()
    assert 10 <= waited <= 11
    assert gate.wait() == 0.0  # the grace period: a tenth of the pause, unpaused
    clock[0] += 1.5
    assert gate.wait() > 0  # then it pauses again


def test_a_hung_redis_costs_one_timeout_per_retry_period_not_one_per_layer():
    class Hung:
        calls = 0

        def zrangebyscore(self, *args):
            self.calls += 1
            raise TimeoutError("Redis did not answer")

        def pipeline(self):
            self.calls += 1
            raise TimeoutError("Redis did not answer")

        def zrem(self, *args):
            self.calls += 1
            raise TimeoutError("Redis did not answer")

    now = [0.0]
    hung = Hung()
    gate = ServingGate(hung, "x", "always", timer=lambda: now[0])
    for _ in range(50):  # fifty layers within a second
        assert gate.wait() == 0.0
        now[0] += 0.02
    assert hung.calls == 1
    now[0] += 5
    gate.wait()
    assert hung.calls == 2  # tried again after RETRY_S
    mark = ServingMark(hung, "x")
    for _ in range(20):
        with mark.scoring():
            pass
    assert hung.calls == 3  # one failed publish, then nothing until RETRY_S has passed


def test_without_redis_nothing_pauses_and_nothing_breaks():
    from redis import Redis

    dead = Redis(host="127.0.0.1", port=1, socket_timeout=0.2, socket_connect_timeout=0.2)
    mark = ServingMark(dead, "nothing")
    with mark.scoring():
        pass
    assert ServingGate(dead, "nothing", "always").wait() == 0.0


class CountingGate:
    """A gate that never waits and counts how often it was asked."""

    mode = "always"
    calls = 0

    def wait(self) -> float:
        self.calls += 1
        return 0.0


def test_every_layer_waits_at_the_gate_and_the_hooks_go_away(tiny_judge):
    import torch

    model = tiny_judge.model
    layers = decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    gate = CountingGate()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with pause_hooks(model, gate):  # type: ignore[arg-type]
            hooked = model(input_ids=ids).logits
        assert gate.calls == len(layers)
        model(input_ids=ids)
    assert gate.calls == len(layers)  # removed on exit
    assert torch.equal(plain, hooked)  # the hooks do not change what the model computes


def test_training_waits_at_the_gate_in_the_backward_pass_too(tiny_judge):
    """A training step spends most of its time in the backward pass, where no forward hook runs: each layer
    waits again when its gradient is reached, and the gradients are those of the plain model."""

    import torch

    model = tiny_judge.model
    layers = decoder_layers(model)
    ids = torch.tensor([[1, 2, 3, 4]])
    weight = model.get_input_embeddings().weight
    was = weight.requires_grad
    weight.requires_grad_(True)
    try:
        model(input_ids=ids).logits.sum().backward()
        plain = weight.grad.clone()
        weight.grad = None
        gate = CountingGate()
        with pause_hooks(model, gate):  # type: ignore[arg-type]
            loss = model(input_ids=ids).logits.sum()
            assert gate.calls == len(layers)
            loss.backward()
        assert gate.calls == 2 * len(layers)
        assert torch.equal(plain, weight.grad)
    finally:
        weight.grad = None
        weight.requires_grad_(was)


def test_service_raises_the_mark_only_while_the_judge_scores(settings, tiny_judge, redis_client, base, qa):
    from backend.service import Service
    from backend.state.registry import Registry

    seen: list[bool] = []
    gate = ServingGate(redis_client, base, "always", host="elsewhere")

    class Spy:
        def score(self, rubric, tasks, adapter):
            seen.append(gate.serving())
            return tiny_judge.score(rubric, tasks, adapter)

    mark = ServingMark(redis_client, base, host=f"other-{os.getpid()}")
    service = Service(settings, tiny_judge, Registry(settings.model_dir, base, None), serving_mark=mark)
    service.scorer = Spy()  # type: ignore[assignment]
    ctx = service.context("1", None)
    service.score_inputs(ctx, [{"context": "c.", "question": "q?", "answer": "a."}])
    assert seen == [True]
    assert not gate.serving()
