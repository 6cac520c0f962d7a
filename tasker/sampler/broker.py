"""Sample broker queues: depth, age of the next message, unacked, consumers.

One call opens its own short-lived clone of the given kombu connection (with
bounded timeouts), samples every queue, and closes it again. Transports:

* Redis (``redis://``, ``rediss://``, ``sentinel://``): kombu keeps each
  priority level of a queue in its own list, so every level is read. One
  round trip reads all of them (one server-side script, plus the unacked hash); a second one
  is made only when unacked messages were published through a named
  exchange and the exchange's binding table is needed to map them to queues.
* AMQP (``amqp://``, py-amqp): one passive ``queue.declare`` per queue.

``None`` in a sample means the broker does not tell (or there is no message);
it is never replaced by ``-1`` or a made-up ``0``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import kombu
from kombu.exceptions import KombuError

__all__ = [
    "PUBLISHED_AT_HEADER",
    "BrokerSampleError",
    "QueueSample",
    "sample_queues",
]

#: Message header (float, Unix seconds) stamped by tasker's ``before_task_publish``.
PUBLISHED_AT_HEADER = "tasker_published_at"

# A sampler must never hang a beat task: cap the caller's timeouts (a smaller
# value the caller configured is kept).
CONNECT_TIMEOUT = 3.0
IO_TIMEOUT = 5.0


@dataclass(frozen=True)
class QueueSample:
    queue: str
    #: Messages waiting: Redis = all priority levels summed; AMQP = ready messages.
    depth: int
    #: now - publish stamp of the message that will be consumed next; None when
    #: the queue is empty, the message has no stamp, or the broker cannot peek.
    oldest_message_age_seconds: float | None
    #: Delivered, not yet acknowledged; None when the broker does not tell.
    unacked: int | None
    #: Consumers attached; None when the broker does not tell (Redis).
    consumers: int | None


class BrokerSampleError(Exception):
    """The broker could not be sampled; the message never contains a password."""


def sample_queues(
    connection: kombu.Connection,
    queues: Sequence[str],
    now: float | None = None,
) -> dict[str, QueueSample]:
    """Sample ``queues`` on the broker of ``connection``; keys are queue names.

    A queue the broker reports as absent (AMQP ``404``) is left out of the
    result, as is a Redis queue whose key holds something other than a list;
    a Redis queue with no list at any level has depth 0 (Redis cannot tell
    "absent" from "empty"). ``now`` (Unix seconds) defaults to ``time.time()``.

    Raises :class:`BrokerSampleError` when the broker cannot be reached or
    answers with an error, and for a transport other than Redis or AMQP.
    """
    names = [queues] if isinstance(queues, str) else list(dict.fromkeys(queues))
    now = time.time() if now is None else now
    driver = connection.transport.driver_type
    if driver == "redis":
        sampler = _sample_redis
    elif driver == "amqp":
        sampler = _sample_amqp
    else:
        raise BrokerSampleError(
            f"cannot sample queues on broker {_safe_uri(connection)}: "
            f"transport {driver!r} is not supported (redis and amqp are)"
        )

    conn = _bounded_clone(connection)
    try:
        # One attempt per host (no back-off sleeps): the sampler runs again at
        # the next interval anyway, and a sample must end within seconds.
        conn.ensure_connection(max_retries=max(len(conn.alt) - 1, 0))
        return sampler(conn, names, now)
    except (KombuError, OSError, *conn.connection_errors, *conn.channel_errors) as exc:
        # ``from None``: the message carries the redacted cause; the original
        # exception is dropped so a traceback cannot leak what we redacted.
        raise BrokerSampleError(
            f"cannot sample broker {_safe_uri(connection)}: "
            f"{type(exc).__name__}: {_redact(str(exc), connection.password)}"
        ) from None
    finally:
        _close_quietly(conn)


# --------------------------------------------------------------------- Redis


def _sample_redis(
    conn: kombu.Connection, queues: list[str], now: float
) -> dict[str, QueueSample]:
    import redis  # the Redis transport already requires it

    # kombu's channel resolves the transport options (sep, priority_steps,
    # unacked_key, global_keyprefix, ack_emulation) exactly as the workers do.
    # Creating it costs one PING (kombu checks the connection).
    chan = conn.default_channel
    prefix: str = chan.global_keyprefix or ""
    # A plain client on the channel's own pool (the connection the PING just
    # opened): kombu's prefixing client only prefixes the commands kombu
    # itself uses (not LINDEX/HVALS), so every key below is prefixed by hand.
    client = redis.Redis(connection_pool=chan.client.connection_pool)

    levels = {q: [prefix + k for k in _level_keys(q, chan.priority_steps, chan.sep)]
              for q in queues}
    keys = [k for ks in levels.values() for k in ks]
    # One server-side script reads every level of every queue: one command to
    # pack instead of two per list, and only the message that will be consumed
    # next crosses the wire (not the head of every level).
    with client.pipeline(transaction=False) as pipe:  # both in one round trip
        pipe.eval(_LEVELS_SCRIPT, len(keys), *keys, *[len(ks) for ks in levels.values()])
        if chan.ack_emulation:
            pipe.hvals(prefix + chan.unacked_key)
        replies, *rest = pipe.execute()
    unacked_values = rest[0] if rest else None

    unacked: dict[str, int] | None = None
    if unacked_values is not None:
        unacked = _redis_unacked_by_queue(
            client, unacked_values, queues, prefix + chan.keyprefix_queue, chan.sep
        )

    out: dict[str, QueueSample] = {}
    for queue, (depth, head) in zip(levels, _pairs(replies), strict=True):
        if depth < 0:
            continue  # a key of another type: this queue cannot be read, the rest can
        stamp = _published_at(head)
        out[queue] = QueueSample(
            queue=queue,
            depth=depth,
            # Clamp: a publisher's clock slightly ahead must not give a negative age.
            oldest_message_age_seconds=None if stamp is None else max(0.0, now - stamp),
            unacked=None if unacked is None else unacked[queue],
            consumers=None,  # Redis does not know who BRPOPs a list.
        )
    return out


def _pairs(replies: list[Any]) -> list[tuple[int, bytes | None]]:
    return [(int(replies[i]), replies[i + 1] or None) for i in range(0, len(replies), 2)]


#: KEYS: every priority level of every queue, in order; ARGV: levels per queue.
#: Returns per queue: total depth (-1 if a key is not a list) and the message
#: that will be consumed next. kombu LPUSHes and (B)RPOPs, so that is the right
#: end (index -1) of the first non-empty level in priority_steps order (BRPOP
#: and kombu's _get try the levels in that order).
_LEVELS_SCRIPT = """
local out, k = {}, 1
for q = 1, #ARGV do
  local depth, head = 0, false
  for _ = 1, tonumber(ARGV[q]) do
    local key = KEYS[k]
    k = k + 1
    local kind = redis.call('TYPE', key)['ok']
    if kind == 'list' then
      local n = redis.call('LLEN', key)
      if n > 0 and depth >= 0 and not head then head = redis.call('LINDEX', key, -1) end
      if depth >= 0 then depth = depth + n end
    elseif kind ~= 'none' then
      depth = -1
    end
  end
  out[#out + 1] = depth
  out[#out + 1] = head
end
return out
"""


def _level_keys(queue: str, priority_steps: Iterable[int], sep: str) -> list[str]:
    """The list key of each priority level, in the order kombu consumes them.

    Mirrors ``kombu.transport.redis.Channel._q_for_pri`` for a step value:
    step 0 is the bare queue name, any other step is ``queue + sep + step``.
    """
    return [f"{queue}{sep}{step}" if step else queue for step in priority_steps]


def _published_at(raw: bytes | None) -> float | None:
    """The ``tasker_published_at`` header of a raw kombu Redis message, if any."""
    if not raw:
        return None
    try:
        headers = json.loads(raw).get("headers") or {}
        stamp = headers.get(PUBLISHED_AT_HEADER)
    except (ValueError, AttributeError):
        return None  # not a kombu JSON envelope (foreign producer)
    if isinstance(stamp, str):  # what tasker stamps (see tasker/correlation.py)
        try:
            stamp = float(stamp)
        except ValueError:
            return None
    elif isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
        return None
    return float(stamp) if math.isfinite(stamp) else None


def _redis_unacked_by_queue(
    client: Any,
    values: list[bytes],
    queues: list[str],
    binding_key_fmt: str,
    sep: str,
) -> dict[str, int]:
    """Count the entries of kombu's unacked hash per queue.

    Each value is ``json([message, exchange, routing_key])`` (kombu's
    ``QoS.append``): the queue it came from is not recorded, so it is mapped
    back the way kombu restores it (``Channel._lookup``):

    * exchange ``""`` (Celery's default for ``task_create_missing_queues``
      and ``send_task(queue=...)``): the routing key is the queue;
    * a named exchange: its binding table ``_kombu.binding.<exchange>``
      (members ``routing_key SEP pattern SEP queue``) is read; a binding with
      a pattern (only topic exchanges store one, a regex) matches by regex,
      one without matches the exact routing key (kombu's default for an
      exchange it has not seen declared is ``direct``). A fanout exchange
      looks like a direct one here; Celery's fanout consumers do not ack.

    A message whose routing matches several queues counts under each of them.
    The hash is read (HVALS) and decoded once per call, whatever the number
    of queues.
    """
    routes: Counter[tuple[str, str]] = Counter()
    for value in values:
        route = _unacked_route(value)
        if route is not None:
            routes[route] += 1

    exchanges = sorted({ex for ex, _ in routes if ex})
    tables: dict[str, list[list[str]]] = {}
    if exchanges:
        with client.pipeline(transaction=False) as pipe:
            for exchange in exchanges:
                pipe.smembers(binding_key_fmt % (exchange,))
            for exchange, members in zip(exchanges, pipe.execute(), strict=True):
                tables[exchange] = [m.decode().split(sep) for m in members]

    counts = dict.fromkeys(queues, 0)
    for (exchange, routing_key), n in routes.items():
        for queue in _route(exchange, routing_key, tables.get(exchange, [])):
            if queue in counts:
                counts[queue] += n
    return counts


def _unacked_route(value: bytes) -> tuple[str, str] | None:
    """``(exchange, routing_key)`` of one unacked-hash value.

    Fast path: decode only the tail after the message envelope's closing
    brace, ``, "EX", "RK"]`` (a whole message costs ~17 us to decode, the
    tail ~1 us). A ``}`` inside EX or RK makes the tail start inside a JSON
    string, which never parses as two strings (its quotes are escaped), so
    the full decode below is the fallback, never a wrong answer.
    """
    try:
        tail = json.loads(b"[null" + value[value.rindex(b"}") + 1:])
        if len(tail) == 3 and all(isinstance(x, str) for x in tail[1:]):
            return tail[1], tail[2]
    except ValueError:
        pass
    try:
        _message, exchange, routing_key = json.loads(value)
    except (ValueError, TypeError):
        return None  # not kombu's format: cannot be attributed
    return exchange or "", routing_key or ""


def _route(exchange: str, routing_key: str, table: list[list[str]]) -> set[str]:
    if not exchange:
        return {routing_key}
    matched = set()
    for binding in table:
        if len(binding) != 3:
            continue  # a name containing ``sep``: kombu cannot split it either
        binding_key, pattern, queue = binding
        if pattern:
            try:
                if re.match(pattern, routing_key):
                    matched.add(queue)
            except re.error:
                pass
        elif binding_key == routing_key:
            matched.add(queue)
    return matched


# ---------------------------------------------------------------------- AMQP


def _sample_amqp(
    conn: kombu.Connection, queues: list[str], now: float
) -> dict[str, QueueSample]:
    out: dict[str, QueueSample] = {}
    channel = conn.channel()
    try:
        for queue in queues:
            try:
                # queue.declare-ok gives ready messages (not the unacked ones)
                # and the consumer count; passive: never creates the queue.
                _name, ready, consumers = channel.queue_declare(queue=queue, passive=True)
            except conn.channel_errors:
                # 404 NOT_FOUND (or 405 RESOURCE_LOCKED: another connection's
                # exclusive queue) closes the channel: leave the queue out and
                # go on with a new channel.
                channel = conn.channel()
                continue
            out[queue] = QueueSample(
                queue=queue,
                depth=ready,
                # AMQP cannot peek at a message without consuming it (basic.get
                # would take it, and a reject puts it back redelivered), so the
                # next message's age is unknown.
                oldest_message_age_seconds=None,
                # Unacked counts are only in the management plugin's HTTP API,
                # which is not assumed.
                unacked=None,
                consumers=consumers,
            )
    finally:
        # Best effort: the connection is closed right after anyway.
        with contextlib.suppress(Exception):
            channel.close()
    return out


# ------------------------------------------------------------------- helpers


def _bounded_clone(connection: kombu.Connection) -> kombu.Connection:
    """A copy of ``connection`` whose connect and I/O timeouts are capped."""
    options = dict(connection.transport_options or {})
    if connection.transport.driver_type == "redis":
        timeouts = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": IO_TIMEOUT}
    else:  # py-amqp: connect_timeout also bounds the AMQP handshake
        timeouts = {"read_timeout": IO_TIMEOUT, "write_timeout": IO_TIMEOUT}
    for name, cap in timeouts.items():
        options[name] = min(options.get(name) or cap, cap)
    return connection.clone(
        connect_timeout=min(connection.connect_timeout or CONNECT_TIMEOUT, CONNECT_TIMEOUT),
        transport_options=options,
    )


def _close_quietly(conn: kombu.Connection) -> None:
    try:
        conn.release()
    except Exception:
        # Closing a broken connection can fail: drop it without I/O instead.
        conn.collect()


def _safe_uri(connection: kombu.Connection) -> str:
    try:
        return connection.as_uri()  # masks the password as **
    except Exception:
        return f"{connection.transport_cls}://"


def _redact(text: str, password: Any) -> str:
    if isinstance(password, str) and password:
        for form in {password, quote(password, safe="")}:
            text = text.replace(form, "**")
    return text
