"""sample_queues against the real RabbitMQ on 127.0.0.1:5672 (unique queue names)."""

from __future__ import annotations

import time
import uuid

import kombu
import pytest
from celery import Celery

from tasker.sampler.broker import BrokerSampleError, QueueSample, sample_queues

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def names():
    """Unique queue (and same-named exchange) names, deleted after the test."""
    created: list[str] = []

    def make(label: str = "q") -> str:
        name = f"tasker-sampler-test-{label}-{uuid.uuid4().hex[:10]}"
        created.append(name)
        return name

    yield make
    with kombu.Connection(AMQP_URL) as conn:
        for name in created:
            for delete in ("queue_delete", "exchange_delete"):
                channel = conn.channel()  # a failed delete closes its channel
                try:
                    getattr(channel, delete)(name)
                except conn.channel_errors:
                    pass
                else:
                    channel.close()


def _app(queue: str) -> Celery:
    app = Celery("tasker_sampler_test", broker=AMQP_URL, set_as_current=False)
    app.conf.update(
        task_queues=[kombu.Queue(queue, kombu.Exchange(queue), routing_key=queue,
                                 queue_arguments={"x-max-priority": 10})],
        # Confirms: every publish has reached the queue when send_task returns.
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=False,
    )
    return app


def _publish_300(queue: str) -> None:
    app = _app(queue)
    try:
        with app.producer_or_acquire() as producer:
            for pri in [0, 3, 9] * 100:
                app.send_task("tasker.tests.noop", queue=queue, priority=pri,
                              producer=producer)
    finally:
        app.close()


def test_depth_and_consumers(names):
    queue = names()
    _publish_300(queue)

    result = sample_queues(kombu.Connection(AMQP_URL), [queue])
    assert result == {queue: QueueSample(queue, 300, None, None, 0)}

    with kombu.Connection(AMQP_URL) as consumer_conn:
        channel = consumer_conn.channel()
        channel.basic_qos(0, 1, False)  # the broker hands exactly one message over
        consumer = kombu.Consumer(channel, [kombu.Queue(queue, no_declare=True)],
                                  callbacks=[lambda body, message: None])
        consumer.consume()
        deadline = time.monotonic() + 5
        while True:
            sample = sample_queues(kombu.Connection(AMQP_URL), [queue])[queue]
            # depth = ready messages: the one delivered (unacked) is not counted.
            if (sample.consumers, sample.depth) == (1, 299) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (sample.consumers, sample.depth) == (1, 299)
        assert sample.unacked is None
        assert sample.oldest_message_age_seconds is None


def test_missing_queue_is_left_out_and_the_rest_still_sampled(names):
    present, missing = names("present"), names("missing")
    _publish_300(present)
    result = sample_queues(kombu.Connection(AMQP_URL), [missing, present, missing + "-2"])
    assert list(result) == [present]
    assert result[present].depth == 300


def test_unreachable_broker_raises_quickly_without_password():
    conn = kombu.Connection("amqp://guest:secret@127.0.0.1:1//")
    started = time.monotonic()
    with pytest.raises(BrokerSampleError) as info:
        sample_queues(conn, ["celery"])
    assert time.monotonic() - started < 5
    assert "secret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


def test_bad_credentials_raise_without_password():
    conn = kombu.Connection("amqp://guest:wrong-secret@127.0.0.1:5672//")
    with pytest.raises(BrokerSampleError) as info:
        sample_queues(conn, ["celery"])
    assert "secret" not in str(info.value)
