"""tasker.receipt: what the MainProcess does with each message, around Celery's handler."""

from __future__ import annotations

import logging
import types
from typing import Any

import pytest

from tasker import correlation, receipt
from tasker.correlation import CORRELATION_HEADER, is_valid_correlation_id
from tasker.metrics.recording import ReceivedCount

VALID = "0190a6e5-4c1e-7d2a-8b3c-1234567890ab"


class FakeRecorder:
    """The one method receipt uses: an entry per (task, exchange, routing key)."""

    def __init__(self, bound: int = 10_000) -> None:
        self.entries: dict[tuple[Any, ...], ReceivedCount] = {}
        self.direct: list[tuple[Any, ...]] = []
        self.bound = bound

    def received_entry(self, name: str, info: dict[str, Any]) -> ReceivedCount | None:
        key = (name, info.get("exchange"), info.get("routing_key"))
        if key not in self.entries and len(self.entries) >= self.bound:
            self.direct.append(key)
            return None
        return self.entries.setdefault(key, ReceivedCount(None))

    def counted(self) -> dict[tuple[Any, ...], int]:
        return {k: v.counted for k, v in self.entries.items()}


def _message(queue: str = "q", **headers: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(headers={"task": "a", "id": "t-1", **headers},
                                 delivery_info={"exchange": "", "routing_key": queue})


@pytest.fixture(autouse=True)
def _fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(correlation, "_logged_missing", False)


def test_counts_before_celery_hands_the_task_on_and_passes_everything_on() -> None:
    """Counted before the pool can start it: a scrape never sees started > received."""
    seen: list[tuple[Any, ...]] = []
    recorder = FakeRecorder()

    def strategy(*args: Any) -> str:
        queue = args[0].delivery_info["routing_key"]
        already = sum(1 for a in seen if a[0].delivery_info["routing_key"] == queue)
        assert recorder.counted().get(("a", "", queue), 0) == already + 1  # counted already
        seen.append(args)
        return "handled"

    handler = receipt.receiving("a", strategy, recorder, log_received=False)  # type: ignore[arg-type]
    for queue in ("q", "q", "other"):
        message = _message(queue, **{CORRELATION_HEADER: VALID})
        assert handler(message, "body", "ack", "reject", "callbacks") == "handled"
    assert [a[1:] for a in seen] == [("body", "ack", "reject", "callbacks")] * 3
    assert recorder.counted() == {("a", "", "q"): 2, ("a", "", "other"): 1}


def test_a_message_celery_refuses_is_not_counted() -> None:
    recorder = FakeRecorder()

    def strategy(*_: Any) -> None:
        raise ValueError("invalid task message")

    handler = receipt.receiving("a", strategy, recorder, log_received=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        handler(_message(**{CORRELATION_HEADER: VALID}), None, None, None, None)
    assert sum(recorder.counted().values()) == 0


def test_past_the_recorders_bound_the_recorder_counts_itself() -> None:
    recorder = FakeRecorder(bound=0)
    handler = receipt.receiving("a", lambda *_: None, recorder, False)  # type: ignore[arg-type]
    for _ in range(3):
        handler(_message(**{CORRELATION_HEADER: VALID}), None, None, None, None)
    assert recorder.direct == [("a", "", "q")] * 3 and not recorder.entries


def test_with_task_received_logged_every_message_without_an_id_gets_one(
        caplog: pytest.LogCaptureFixture) -> None:
    handler = receipt.receiving("a", lambda *_: None, None, log_received=True)
    caplog.set_level(logging.INFO, logger="tasker")
    messages = [_message(), _message(**{CORRELATION_HEADER: "not-a-uuid"}),
                _message(**{CORRELATION_HEADER: VALID})]
    for m in messages:
        handler(m, None, None, None, None)
    ids = [m.headers[CORRELATION_HEADER] for m in messages]
    assert all(is_valid_correlation_id(i) for i in ids) and ids[2] == VALID
    logged = [r.correlation_id for r in caplog.records if r.getMessage() == "task.received"]
    assert logged == ids
    assert [r.getMessage() for r in caplog.records].count("correlation.assigned_at_receipt") == 1


def test_without_it_only_the_first_message_without_an_id_gets_one_here(
        caplog: pytest.LogCaptureFixture) -> None:
    """Later ones get theirs where the task first needs it (the pool process)."""
    handler = receipt.receiving("a", lambda *_: None, None, log_received=False)
    caplog.set_level(logging.INFO, logger="tasker")
    first, second, third = _message(), _message(), _message(**{CORRELATION_HEADER: VALID})
    for m in (first, second, third):
        handler(m, None, None, None, None)
    assert is_valid_correlation_id(first.headers[CORRELATION_HEADER])
    assert CORRELATION_HEADER not in second.headers
    assert third.headers[CORRELATION_HEADER] == VALID
    warned = [r for r in caplog.records if r.getMessage() == "correlation.assigned_at_receipt"]
    assert len(warned) == 1 and warned[0].correlation_id == first.headers[CORRELATION_HEADER]
    assert not [r for r in caplog.records if r.getMessage() == "task.received"]


def test_a_valid_id_costs_no_call_when_task_received_is_not_logged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(receipt, "on_receipt", lambda *a: calls.append(a) or True)
    handler = receipt.receiving("a", lambda *_: None, None, log_received=False)
    for _ in range(5):
        handler(_message(**{CORRELATION_HEADER: VALID}), None, None, None, None)
    assert calls == []


def test_the_step_wraps_each_handler_once_also_after_a_restart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tasker.metrics import recording

    monkeypatch.setattr(recording, "_recorder", None)
    original = {"a": lambda *_: "a", "b": lambda *_: "b"}
    consumer = types.SimpleNamespace(strategies=dict(original))
    step = receipt.Receipt.__new__(receipt.Receipt)
    step.start(consumer)
    wrapped = dict(consumer.strategies)
    step.start(consumer)  # a restart whose Tasks step kept the handlers
    assert consumer.strategies == wrapped
    assert {n: h.__wrapped__ for n, h in wrapped.items()} == original
    assert wrapped["b"](_message(**{CORRELATION_HEADER: VALID}), None, None, None, None) == "b"
