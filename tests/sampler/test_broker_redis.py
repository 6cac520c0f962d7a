"""sample_queues against the real Redis on 127.0.0.1:6379 (db 13, unique keys)."""

from __future__ import annotations

import contextlib
import time
import uuid

import kombu
import pytest
import redis
from celery import Celery
from celery.signals import before_task_publish
from kombu.transport.redis import Channel as RedisChannel

from tasker.correlation import publish_stamp
from tasker.sampler.broker import (
    PUBLISHED_AT_HEADER,
    BrokerSampleError,
    QueueSample,
    _level_keys,
    _unacked_route,
    sample_queues,
)

REDIS_URL = "redis://127.0.0.1:6379/13"
SEP = RedisChannel.sep
DEFAULT_STEPS = RedisChannel.priority_steps


@pytest.fixture(params=["string", "number"])
def stamping(request):
    """Stand-in for tasker's before_task_publish handler: stamps the publish time.

    As tasker does (a decimal string), and as a JSON number (older publishers).
    """
    uid = f"tasker-sampler-test-{uuid.uuid4().hex}"

    def stamp(headers=None, **_):
        headers[PUBLISHED_AT_HEADER] = (publish_stamp(time.time()) if request.param == "string"
                                        else time.time())

    before_task_publish.connect(stamp, weak=False, dispatch_uid=uid)
    yield
    before_task_publish.disconnect(stamp, dispatch_uid=uid)


class RedisEnv:
    """Unique queue names (optionally under a unique global_keyprefix), cleaned up after."""

    def __init__(self, prefix: str, transport_options: dict | None = None) -> None:
        self.prefix = prefix
        self.transport_options = dict(transport_options or {})
        if prefix:
            self.transport_options["global_keyprefix"] = prefix
        self.raw = redis.Redis.from_url(REDIS_URL)
        self.queues: list[str] = []
        self.closers: list = []

    def queue(self, label: str = "q") -> str:
        name = f"tasker-sampler-test-{label}-{uuid.uuid4().hex[:10]}"
        self.queues.append(name)
        return name

    def connection(self) -> kombu.Connection:
        conn = kombu.Connection(REDIS_URL, transport_options=self.transport_options)
        self.closers.append(conn.release)
        return conn

    def app(self) -> Celery:
        app = Celery("tasker_sampler_test", broker=REDIS_URL, set_as_current=False)
        app.conf.update(
            broker_transport_options=self.transport_options,
            task_create_missing_queues=True,
            broker_connection_retry_on_startup=False,
        )
        self.closers.append(app.close)
        return app

    def cleanup(self) -> None:
        for close in reversed(self.closers):  # consumers first: they restore unacked
            with contextlib.suppress(Exception):
                close()
        if self.prefix:
            keys = list(self.raw.scan_iter(match=f"{self.prefix}*", count=1000))
        else:
            steps = self.transport_options.get("priority_steps", DEFAULT_STEPS)
            sep = self.transport_options.get("sep", SEP)
            keys = [k for q in self.queues for k in _level_keys(q, steps, sep)]
            keys += [f"_kombu.binding{kind}.{q}" for q in self.queues
                     for kind in ("", "_permanent")]
            self._drop_unacked_entries()
        if keys:
            self.raw.delete(*keys)
        self.raw.close()

    def _drop_unacked_entries(self) -> None:
        # The plain 'unacked' hash is shared with everyone on db 13: remove only
        # entries that name one of our (unique) queues.
        for tag, value in self.raw.hscan_iter("unacked"):
            if any(q.encode() in value for q in self.queues):
                self.raw.hdel("unacked", tag)
                self.raw.zrem("unacked_index", tag)


@pytest.fixture(params=["plain", "prefixed"])
def env(request):
    prefix = "" if request.param == "plain" else f"tasker-sampler-test-{uuid.uuid4().hex[:8]}:"
    env = RedisEnv(prefix)
    yield env
    env.cleanup()


def _publish(app: Celery, queue: str, priorities: list[int]) -> None:
    with app.producer_or_acquire() as producer:
        for pri in priorities:
            app.send_task("tasker.tests.noop", queue=queue, priority=pri, producer=producer)


def test_depth_sums_all_priority_levels(env, stamping):
    queue = env.queue()
    _publish(env.app(), queue, [0, 3, 9] * 100)

    # The messages really are spread over three lists: the base key alone has 100.
    lengths = [env.raw.llen(env.prefix + k) for k in _level_keys(queue, DEFAULT_STEPS, SEP)]
    assert lengths == [100, 100, 0, 100]

    result = sample_queues(env.connection(), [queue])
    assert set(result) == {queue}
    sample = result[queue]
    assert sample.depth == 300
    assert sample.unacked == 0
    assert sample.consumers is None
    assert sample.oldest_message_age_seconds is not None
    assert 0 <= sample.oldest_message_age_seconds < 60


def test_oldest_age_grows_between_samples(env, stamping):
    queue = env.queue()
    _publish(env.app(), queue, [3])
    conn = env.connection()
    first = sample_queues(conn, [queue])[queue].oldest_message_age_seconds
    time.sleep(1.0)
    second = sample_queues(conn, [queue])[queue].oldest_message_age_seconds
    assert first is not None and second is not None
    assert 0.9 <= second - first <= 5


def test_age_is_that_of_the_message_kombu_consumes_next(env, stamping):
    queue = env.queue()
    app = env.app()
    _publish(app, queue, [9])  # older, but priority 9 is consumed last
    time.sleep(0.05)
    _publish(app, queue, [0, 0])

    conn = env.connection()
    now = time.time()
    age = sample_queues(conn, [queue], now=now)[queue].oldest_message_age_seconds
    # Ask kombu itself for the next message (basic_get -> Channel._get, the
    # same level order as BRPOP): its stamp is the one we reported.
    message = kombu.Queue(queue, channel=conn.default_channel).get(no_ack=True)
    assert float(message.headers[PUBLISHED_AT_HEADER]) == pytest.approx(now - age, abs=1e-6)
    assert message.properties["priority"] == 0
    # Of the two priority-0 messages, the first published is consumed first.
    second = kombu.Queue(queue, channel=conn.default_channel).get(no_ack=True)
    assert float(second.headers[PUBLISHED_AT_HEADER]) > float(message.headers[PUBLISHED_AT_HEADER])

    left = sample_queues(conn, [queue], now=now)[queue]
    assert left.depth == 1
    nine = kombu.Queue(queue, channel=conn.default_channel).get(no_ack=True)
    assert nine.properties["priority"] == 9
    assert float(nine.headers[PUBLISHED_AT_HEADER]) == pytest.approx(
        now - left.oldest_message_age_seconds, abs=1e-6)
    assert sample_queues(conn, [queue])[queue] == QueueSample(queue, 0, None, 0, None)


def test_message_without_stamp_has_no_age(env):
    queue = env.queue()
    conn = env.connection()
    # A non-tasker producer: plain kombu, no tasker_published_at header.
    conn.SimpleQueue(queue).put({"hello": "world"})
    sample = sample_queues(conn, [queue])[queue]
    assert sample.depth == 1
    assert sample.oldest_message_age_seconds is None


def test_fetched_but_unacked_message_counts_as_unacked(env, stamping):
    queue, other = env.queue(), env.queue("other")
    _publish(env.app(), queue, [0, 0, 0])
    consumer = env.connection()
    message = kombu.Queue(queue, channel=consumer.default_channel).get(no_ack=False)
    assert message is not None

    samples = sample_queues(env.connection(), [queue, other])
    assert samples[queue].depth == 2
    assert samples[queue].unacked == 1
    assert samples[other].unacked == 0

    message.ack()
    assert sample_queues(env.connection(), [queue])[queue].unacked == 0


def test_unacked_through_named_exchanges_maps_via_bindings(env):
    direct_q, topic_q = env.queue("direct"), env.queue("topic")
    direct = kombu.Exchange(f"{direct_q}-x", type="direct")
    topic = kombu.Exchange(f"{topic_q}-x", type="topic")
    # The cleanup deletes the binding tables too (they are named after the exchanges).
    env.queues += [direct.name, topic.name]
    conn = env.connection()
    chan = conn.default_channel
    queues = [kombu.Queue(direct_q, direct, routing_key="work"),
              kombu.Queue(topic_q, topic, routing_key="video.*")]
    producer = kombu.Producer(chan)
    for q in queues:
        q(chan).declare()
    producer.publish({"n": 1}, exchange=direct, routing_key="work")
    producer.publish({"n": 2}, exchange=topic, routing_key="video.compress")
    producer.publish({"n": 3}, exchange=topic, routing_key="video.compress")
    held = [kombu.Queue(q, channel=chan).get(no_ack=False)
            for q in (direct_q, topic_q, topic_q)]
    assert all(held)

    samples = sample_queues(env.connection(), [direct_q, topic_q])
    assert (samples[direct_q].unacked, samples[direct_q].depth) == (1, 0)
    assert (samples[topic_q].unacked, samples[topic_q].depth) == (2, 0)


def test_honours_sep_and_priority_steps_transport_options(stamping):
    env = RedisEnv("", {"sep": ":", "priority_steps": [0, 5]})
    try:
        queue = env.queue()
        _publish(env.app(), queue, [0, 7, 7])
        assert env.raw.llen(f"{queue}:5") == 2
        assert sample_queues(env.connection(), [queue])[queue].depth == 3
    finally:
        env.cleanup()


@pytest.mark.parametrize("steps", [DEFAULT_STEPS, list(range(10)), [0, 5]])
def test_level_keys_match_kombu(steps):
    conn = kombu.Connection(REDIS_URL, transport_options={"priority_steps": steps})
    try:
        chan = conn.default_channel
        assert _level_keys("q", steps, chan.sep) == [chan._q_for_pri("q", s) for s in steps]
    finally:
        conn.release()


def test_closes_its_connections():
    name = f"tasker-sampler-test-{uuid.uuid4().hex[:8]}"
    conn = kombu.Connection(REDIS_URL, transport_options={"client_name": name})
    raw = redis.Redis.from_url(REDIS_URL)
    try:
        with kombu.Connection(REDIS_URL, transport_options={"client_name": name}) as held:
            assert held.default_channel is not None  # the name shows while open
            assert any(c.get("name") == name for c in raw.client_list())
        for _ in range(3):
            sample_queues(conn, ["tasker-sampler-test-none"])
        assert [c for c in raw.client_list() if c.get("name") == name] == []
    finally:
        raw.close()


def test_unreachable_broker_raises_quickly_without_password():
    conn = kombu.Connection("redis://:secret@127.0.0.1:1/0")
    started = time.monotonic()
    with pytest.raises(BrokerSampleError) as info:
        sample_queues(conn, ["celery"])
    assert time.monotonic() - started < 5
    assert "secret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


# ------------------------------------------------------- round-trip measurement


def measure_round_trips(conn: kombu.Connection, queues: list[str], monkeypatch):
    """Run one sample and count Redis command round trips (and socket writes).

    A round trip is one ``Redis.execute_command`` (a single command, e.g.
    kombu's PING) or one ``Pipeline.execute`` (any number of commands).
    Socket writes also count the connection handshake.
    """
    counts = {"commands": 0, "pipelines": 0, "writes": 0}

    def counting(kind, original):
        def wrapper(*args, **kwargs):
            counts[kind] += 1
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(redis.Redis, "execute_command",
                        counting("commands", redis.Redis.execute_command))
    monkeypatch.setattr(redis.client.Pipeline, "execute",
                        counting("pipelines", redis.client.Pipeline.execute))
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command",
                        counting("writes", redis.connection.AbstractConnection.send_packed_command))
    started = time.perf_counter()
    result = sample_queues(conn, queues)
    elapsed = time.perf_counter() - started
    monkeypatch.undo()
    return result, counts, elapsed


def test_round_trips_for_50_queues_x_10_levels(monkeypatch, stamping):
    steps = list(range(10))
    env = RedisEnv(f"tasker-sampler-test-{uuid.uuid4().hex[:8]}:", {"priority_steps": steps})
    try:
        queues = [env.queue(f"rt{i}") for i in range(50)]
        # Worst case: an unacked message published through a named exchange,
        # so the binding-table round trip happens too. Published first, so it
        # is the next one of queues[0]'s priority-0 list.
        conn = env.connection()
        chan = conn.default_channel
        exchange = kombu.Exchange(f"{queues[0]}-x", type="direct")
        kombu.Queue(queues[0], exchange, routing_key="rk")(chan).declare()
        kombu.Producer(chan).publish({"n": 1}, exchange=exchange, routing_key="rk")
        app = env.app()
        with app.producer_or_acquire() as producer:
            for q in queues:
                for pri in steps:
                    app.send_task("tasker.tests.noop", queue=q, priority=pri,
                                  producer=producer)
        first = kombu.Queue(queues[0], channel=chan).get(no_ack=False)
        assert first.delivery_info["exchange"] == exchange.name
        held = [kombu.Queue(q, channel=chan).get(no_ack=False) for q in queues[1:5]]
        assert all(held)

        timings = []
        for _ in range(5):
            result, counts, elapsed = measure_round_trips(
                env.connection(), queues, monkeypatch)
            timings.append(elapsed)
        assert counts["commands"] + counts["pipelines"] <= 3, counts
        assert len(result) == 50
        assert result[queues[0]].depth == 10 and result[queues[0]].unacked == 1
        assert result[queues[1]].depth == 9 and result[queues[1]].unacked == 1
        assert result[queues[9]].depth == 10 and result[queues[9]].unacked == 0
        timings.sort()
        print(f"\n50 queues x 10 levels: {counts}, "
              f"median {timings[2] * 1000:.1f} ms, min {timings[0] * 1000:.1f} ms "
              f"(connect + sample + close)")
    finally:
        env.cleanup()


@pytest.mark.parametrize("exchange,routing_key", [
    ("", "celery"), ("tasks", "video.compress"), ("x}", '}", "a'), ("e", "}1,2"), ("é", "ü}"),
])
def test_unacked_route_decodes_exchange_and_routing_key(exchange, routing_key):
    # The format kombu's QoS.append stores: dumps([message, exchange, routing_key]).
    message = {"body": "e30=", "headers": {"a": "}"}, "properties": {"x": "{}"}}
    value = kombu.utils.json.dumps([message, exchange, routing_key]).encode()
    assert _unacked_route(value) == (exchange, routing_key)
    assert _unacked_route(b"not json") is None
