"""Correlation ids (UUIDv7) and the headers stamped on every published message."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tasker.correlation import (
    CORRELATION_HEADER,
    DELIVERY_HEADER,
    PARENT_HEADER,
    PUBLISHED_AT_HEADER,
    _stamp_headers,
    current_correlation_id,
    current_parent_correlation_id,
    is_valid_correlation_id,
    new_correlation,
    uuid7,
)

# -- uuid7 ----------------------------------------------------------------


def test_uuid7_is_version_7_with_the_rfc_variant_and_a_millisecond_timestamp() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(uuid7())
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after + 1


def test_uuid7_sorts_in_creation_order_across_milliseconds() -> None:
    ids = []
    for i in range(1000):
        if i % 250 == 0:
            time.sleep(0.002)  # make sure the ids span several milliseconds
        ids.append(uuid7())
    assert len({uuid.UUID(i).int >> 80 for i in ids}) >= 4
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)


def test_uuid7_ids_are_canonical_strings() -> None:
    value = uuid7()
    assert value == str(uuid.UUID(value)) and is_valid_correlation_id(value)


@pytest.mark.parametrize("value", [
    "0190b2a4-5c1e-7d3f-8a9b-0123456789ab",
    str(uuid.uuid4()),
])
def test_valid_correlation_ids(value: str) -> None:
    assert is_valid_correlation_id(value)


@pytest.mark.parametrize("value", [
    None,
    42,
    b"0190b2a4-5c1e-7d3f-8a9b-0123456789ab",
    "",
    "not-a-uuid",
    "0190B2A4-5C1E-7D3F-8A9B-0123456789AB",  # upper case is not canonical
    "0190b2a45c1e7d3f8a9b0123456789ab",
    "{0190b2a4-5c1e-7d3f-8a9b-0123456789ab}",
    "0190b2a4-5c1e-7d3f-8a9b-0123456789ab\n",
    "0190b2a4-5c1e-7d3f-8a9b-0123456789ag",
])
def test_invalid_correlation_ids(value: Any) -> None:
    assert not is_valid_correlation_id(value)


# -- new_correlation ------------------------------------------------------


def test_new_correlation_sets_the_current_id_and_restores_it() -> None:
    assert current_correlation_id() is None
    with new_correlation() as cid:
        assert is_valid_correlation_id(cid)
        assert current_correlation_id() == cid
        assert current_parent_correlation_id() is None
    assert current_correlation_id() is None
    assert current_parent_correlation_id() is None


def test_nested_new_correlation_names_the_outer_one_as_parent() -> None:
    with new_correlation() as outer:
        with new_correlation() as inner:
            assert inner != outer
            assert current_correlation_id() == inner
            assert current_parent_correlation_id() == outer
        assert current_correlation_id() == outer
        assert current_parent_correlation_id() is None


def test_new_correlation_with_given_ids() -> None:
    cid, parent = str(uuid.uuid4()), str(uuid.uuid4())
    with new_correlation(cid, parent_correlation_id=parent) as got:
        assert got == cid
        assert current_correlation_id() == cid
        assert current_parent_correlation_id() == parent


def test_new_correlation_rejects_an_invalid_id() -> None:
    with pytest.raises(ValueError, match="UUID"), new_correlation("nope"):
        pass
    assert current_correlation_id() is None


# -- _stamp_headers (before_task_publish) ---------------------------------


def test_stamp_headers_outside_any_work_starts_new_work() -> None:
    headers: dict[str, Any] = {}
    before = time.time()
    _stamp_headers(headers=headers, body=(), exchange="", routing_key="celery")
    # A decimal string with microseconds (cheap for the worker to decode and re-encode).
    stamp = headers[PUBLISHED_AT_HEADER]
    assert isinstance(stamp, str) and len(stamp.split(".")[1]) == 6
    assert before - 1e-6 <= float(stamp) <= time.time()
    assert DELIVERY_HEADER not in headers  # only workflow steps carry one (engine.py)
    assert is_valid_correlation_id(headers[CORRELATION_HEADER])
    assert uuid.UUID(headers[CORRELATION_HEADER]).version == 7
    assert PARENT_HEADER not in headers
    other: dict[str, Any] = {}
    _stamp_headers(headers=other)
    assert other[CORRELATION_HEADER] != headers[CORRELATION_HEADER]


def test_stamp_headers_inherits_the_context_id() -> None:
    with new_correlation() as outer, new_correlation() as cid:
        headers: dict[str, Any] = {}
        _stamp_headers(headers=headers)
        assert headers[CORRELATION_HEADER] == cid
        assert headers[PARENT_HEADER] == outer


def test_stamp_headers_keeps_a_valid_given_id_and_delivery() -> None:
    given = str(uuid.uuid4())
    with new_correlation():
        headers: dict[str, Any] = {CORRELATION_HEADER: given, DELIVERY_HEADER: "poll"}
        _stamp_headers(headers=headers)
    assert headers[CORRELATION_HEADER] == given
    assert headers[DELIVERY_HEADER] == "poll"
    assert PUBLISHED_AT_HEADER in headers


def test_stamp_headers_replaces_an_invalid_id() -> None:
    headers: dict[str, Any] = {CORRELATION_HEADER: "not-a-uuid"}
    _stamp_headers(headers=headers)
    assert is_valid_correlation_id(headers[CORRELATION_HEADER])
    with new_correlation() as cid:
        inside: dict[str, Any] = {CORRELATION_HEADER: 12345}
        _stamp_headers(headers=inside)
        assert inside[CORRELATION_HEADER] == cid


def test_stamp_headers_drops_an_invalid_parent_and_keeps_a_valid_one() -> None:
    bad: dict[str, Any] = {PARENT_HEADER: "garbage"}
    _stamp_headers(headers=bad)
    assert PARENT_HEADER not in bad
    parent = str(uuid.uuid4())
    with new_correlation(), new_correlation():
        good: dict[str, Any] = {PARENT_HEADER: parent}
        _stamp_headers(headers=good)
    assert good[PARENT_HEADER] == parent  # an explicit parent wins over the context's


def test_stamp_headers_without_headers_does_nothing() -> None:
    _stamp_headers(headers=None)  # must not raise


# -- inside a running task --------------------------------------------------


@pytest.fixture
def running_task() -> Any:
    """A task with a request pushed the way Celery's tracer does before running it."""
    from celery import Celery
    from celery._state import _task_stack

    app = Celery("correlation-test", set_as_current=False)

    @app.task(name="correlation.test")
    def body() -> None:
        return None

    def push(**request: Any) -> Any:
        body.push_request(called_directly=False, **request)
        _task_stack.push(body)
        return body

    yield push
    while _task_stack.top is body:
        _task_stack.pop()
        body.pop_request()


def test_a_running_task_has_the_ids_of_its_message(running_task: Any) -> None:
    cid, parent = uuid7(), uuid7()
    running_task(id="t1", **{CORRELATION_HEADER: cid, PARENT_HEADER: parent})
    assert current_correlation_id() == cid
    assert current_parent_correlation_id() == parent
    headers: dict[str, Any] = {}
    _stamp_headers(headers=headers)  # a message published by the task inherits both
    assert headers[CORRELATION_HEADER] == cid
    assert headers[PARENT_HEADER] == parent
    with new_correlation() as nested:  # nested work names the task's id as its parent
        assert current_correlation_id() == nested
        assert current_parent_correlation_id() == cid
    assert current_correlation_id() == cid


def test_nested_work_published_the_plain_celery_way_names_its_parent(running_task: Any) -> None:
    """``apply_async(headers={"tasker_correlation_id": new_id})`` inside a task (SPEC §7)."""
    cid, parent = uuid7(), uuid7()
    running_task(id="t3", **{CORRELATION_HEADER: cid, PARENT_HEADER: parent})
    nested = uuid7()
    headers: dict[str, Any] = {CORRELATION_HEADER: nested}
    _stamp_headers(headers=headers)
    assert headers[CORRELATION_HEADER] == nested
    assert headers[PARENT_HEADER] == cid
    same: dict[str, Any] = {CORRELATION_HEADER: cid}  # the same work, named explicitly
    _stamp_headers(headers=same)
    assert same[PARENT_HEADER] == parent
    explicit = str(uuid.uuid4())
    given: dict[str, Any] = {CORRELATION_HEADER: nested, PARENT_HEADER: explicit}
    _stamp_headers(headers=given)
    assert given[PARENT_HEADER] == explicit  # an explicit parent wins


def test_a_valid_id_given_outside_any_work_gets_no_parent() -> None:
    headers: dict[str, Any] = {CORRELATION_HEADER: uuid7()}
    _stamp_headers(headers=headers)
    assert PARENT_HEADER not in headers


def test_a_running_task_without_an_id_gets_one_that_lasts_the_whole_run(
        running_task: Any) -> None:
    running_task(id="t2", **{PARENT_HEADER: "not-a-uuid"})
    first = current_correlation_id()
    assert is_valid_correlation_id(first)
    assert current_correlation_id() == first
    assert current_parent_correlation_id() is None  # an invalid parent is dropped


def test_task_started_is_logged_only_when_debug_is_on() -> None:
    import logging

    from celery.signals import task_prerun

    from tasker import correlation

    task_logger = logging.getLogger("tasker.task")
    level = task_logger.level
    try:
        task_logger.setLevel(logging.DEBUG)
        correlation.log_task_starts_if_enabled()
        assert _connected(task_prerun)
        task_logger.setLevel(logging.INFO)
        correlation.log_task_starts_if_enabled()
        assert not _connected(task_prerun)
    finally:
        task_logger.setLevel(level)
        correlation.log_task_starts_if_enabled()


def _connected(signal: Any) -> bool:
    from tasker import correlation

    return any(r is correlation._log_task_started for r in signal._live_receivers(None))
