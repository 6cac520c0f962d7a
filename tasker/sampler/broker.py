"""Sample broker queues: depth, age of the next message, unacked, consumers.

One call opens its own short-lived clone of the given kombu connection (with
bounded timeouts), samples every queue, and closes it again. Transports:

* Redis (``redis://``, ``rediss://``, ``sentinel://``): kombu keeps each
  priority level of a queue in its own list, so every level is read. One
  round trip runs two server-side scripts: the levels of every queue, and the
  unacked count per route (see ``_UNACKED_SCRIPT``: message bodies are read
  once per delivery, never per sample); a second one is made only when
  unacked messages were published through a named exchange and the
  exchange's binding table is needed to map them to queues.
* AMQP (``amqp://``, py-amqp): one passive ``queue.declare`` per queue.

``None`` in a sample means the broker does not tell (or there is no message);
it is never replaced by ``-1`` or a made-up ``0``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import kombu
from kombu.exceptions import KombuError

from tasker.contracts.kombu_redis import priority_list_keys, unacked_layout_known
from tasker.headers import PUBLISHED_AT_HEADER

__all__ = [
    "PUBLISHED_AT_HEADER",
    "BrokerSampleError",
    "QueueSample",
    "sample_queues",
]

logger = logging.getLogger("tasker.sampler")

#: New unacked deliveries whose body one sample reads, at most (bounds the Redis
#: time of a sample; a backlog of new deliveries is worked off over several
#: samples, and ``unacked`` is unknown, not a guess, until it is).
UNACKED_BATCH = 1000
#: Seconds of delivery stamps re-read when deliveries appear behind the cursor
#: (workers' clocks stamp them, and clocks differ a little).
UNACKED_LOOKBACK = 10.0
#: Seconds of Redis time one sample may spend reading new deliveries' bodies
#: (besides UNACKED_BATCH): a script blocks Redis while it runs.
UNACKED_BUDGET = 0.008
#: Seconds the attribution cursor trails the newest delivery: a delivery is
#: stamped before it is written, so one can land just behind a newer one.
UNACKED_SETTLE = 2.0
#: Seconds of delivery time per bucket of the unacked mirror (see _UNACKED_SCRIPT).
UNACKED_BUCKET = 60
#: Separator of exchange and routing key in a route (neither contains it).
_ROUTE_SEP = "\x1f"

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
    on_queue_error: Callable[[str, str], None] | None = None,
) -> dict[str, QueueSample]:
    """Sample ``queues`` on the broker of ``connection``; keys are queue names.

    A queue the broker reports as absent (AMQP ``404``) is left out of the
    result, as is a Redis queue whose key holds something other than a list;
    a Redis queue with no list at any level has depth 0 (Redis cannot tell
    "absent" from "empty"). ``now`` (Unix seconds) defaults to ``time.time()``.
    A queue that cannot be read while the others can is logged
    (``sample.queue_failed``) and passed to ``on_queue_error(queue, reason)``
    (the node counts it; this module records nothing itself).

    Raises :class:`BrokerSampleError` when the broker cannot be reached or
    answers with an error, and for a transport other than Redis or AMQP.
    """
    names = [queues] if isinstance(queues, str) else list(dict.fromkeys(queues))
    now = time.time() if now is None else now
    driver = connection.transport.driver_type
    if driver == "redis":
        sampler = functools.partial(_sample_redis, on_queue_error=on_queue_error)
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
    conn: kombu.Connection, queues: list[str], now: float,
    on_queue_error: Callable[[str, str], None] | None = None,
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

    levels = {q: [prefix + k for k in priority_list_keys(q, chan.priority_steps, chan.sep)]
              for q in queues}
    keys = [k for ks in levels.values() for k in ks]
    # One server-side script reads every level of every queue: one command to
    # pack instead of two per list, and only the message that will be consumed
    # next crosses the wire (not the head of every level).
    with client.pipeline(transaction=False) as pipe:  # both in one round trip
        pipe.eval(_LEVELS_SCRIPT, len(keys), *keys, *[len(ks) for ks in levels.values()])
        # The unacked hash's layout, checked when the node started (tasker.contracts).
        if chan.ack_emulation and unacked_layout_known():
            unacked_key = prefix + chan.unacked_key
            pipe.eval(_UNACKED_SCRIPT, 3, unacked_key, prefix + chan.unacked_index_key,
                      # Versioned: a new layout never reads an old one's keys.
                      unacked_key + ".tasker.v2.", UNACKED_BATCH, UNACKED_LOOKBACK,
                      UNACKED_BUCKET, UNACKED_SETTLE, int(UNACKED_BUDGET * 1e6))
        # Errors per command: a wrongly typed key costs only what it holds.
        replies, *rest = pipe.execute(raise_on_error=False)
    if isinstance(replies, Exception):
        raise replies

    unacked: dict[str, int] | None = None
    if rest:
        unacked = _unacked_from_reply(client, rest[0], queues, prefix + chan.keyprefix_queue,
                                      chan.sep, on_queue_error)

    out: dict[str, QueueSample] = {}
    for queue, (depth, head) in zip(levels, _pairs(replies), strict=True):
        if depth < 0:
            # A key of another type: this queue cannot be read, the rest can.
            _queue_failed(queue, "a priority-level key of the queue is not a list",
                          on_queue_error)
            continue
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


def _queue_failed(queue: str, reason: str,
                  on_queue_error: Callable[[str, str], None] | None) -> None:
    """One queue could not be sampled: log it and tell the caller; the others go on."""
    logger.warning("sample.queue_failed", extra={"queue": queue, "reason": reason})
    if on_queue_error is not None:
        try:
            on_queue_error(queue, reason)
        except Exception:  # noqa: BLE001 - counting must never fail a sample
            logger.debug("sample.queue_error_not_counted", exc_info=True)


def _unacked_from_reply(client: Any, reply: Any, queues: list[str], binding_key_fmt: str,
                        sep: str, on_queue_error: Callable[[str, str], None] | None = None
                        ) -> dict[str, int] | None:
    """Unacked count per queue from ``_UNACKED_SCRIPT``'s reply; None when not exact."""
    if isinstance(reply, Exception) or not reply or reply[0] != b"ok":
        reason = str(reply) if isinstance(reply, Exception) else "kombu's unacked hash or " \
            "index has the wrong type"
        for queue in queues:  # unknown for every queue; depths stay
            _queue_failed(queue, f"unacked unknown: {reason}", on_queue_error)
        return None
    if int(reply[1]) > 0:
        # Deliveries not yet attributed (a first sample, or a burst bigger than
        # UNACKED_BATCH): the counts would be low, so they are left out.
        return None
    routes: Counter[tuple[str, str]] = Counter()
    for i in range(2, len(reply), 2):
        route, count = reply[i].decode("utf-8", "replace"), int(reply[i + 1])
        if _ROUTE_SEP in route:
            exchange, routing_key = route.split(_ROUTE_SEP, 1)
            routes[(exchange, routing_key)] += count
    return _count_routes(client, routes, queues, binding_key_fmt, sep)


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


#: The tests' name for it; the key scheme is kombu's, in tasker's contract with it.
_level_keys = priority_list_keys


#: KEYS: kombu's unacked hash, its unacked_index zset (tag -> delivery time),
#: and the prefix of this script's own keys. ARGV: batch, lookback seconds,
#: bucket width in seconds, settle seconds, time budget for reading bodies (µs).
#: Returns {"ok", unattributed, route, count, route, count, ...} or {"wrongtype"}.
#:
#: The hash holds every unacked message body (HVALS of 50,000 held 2 KB
#: messages moves 100 MB and blocks Redis for ~40-130 ms). A delivery's route
#: (exchange, routing key) never changes, so it is read once. A mirror keeps
#: the delivery tags seen, per time bucket of their delivery (``width``
#: seconds of unacked_index's score) and route, with each bucket's counts
#: per route as of its last count; a cursor remembers the newest delivery
#: time attributed. Each sample:
#:
#: * attributes at most ``batch`` deliveries newer than the cursor, and no
#:   more than the time budget allows (HGET of
#:   the body, exchange and routing key cut from its tail: kombu stores
#:   ``json([message, exchange, routing_key])``);
#: * per bucket, compares the index's count in the bucket's score range
#:   (ZCOUNT, O(log n)) with the bucket's count as of its last count. Only
#:   deliveries are added and only acks remove, and no delivery is added to
#:   a bucket older than ``lookback`` behind the cursor; so an old bucket
#:   whose count is unchanged lost nothing, and its counts per route stand.
#:   Other buckets (new deliveries, acks, the recent ones) are counted again:
#:   per route, the tags still in unacked_index (ZINTERCARD, in C, no body
#:   read). Held messages that nobody touches therefore cost a ZCOUNT per
#:   bucket, not a lookup per message;
#: * reports how many index entries are not attributed (the index's size
#:   minus the counts): when that is not 0 (a backlog, or a worker whose
#:   clock is behind stamped a delivery before the cursor; the cursor then
#:   steps back ``lookback`` seconds), the caller reports unacked as unknown
#:   rather than low;
#: * drops mirror entries older than the oldest unacked delivery (acked).
_UNACKED_SCRIPT = r"""
local hash, index, m = KEYS[1], KEYS[2], KEYS[3]
local th, ti = redis.call('TYPE', hash)['ok'], redis.call('TYPE', index)['ok']
if (th ~= 'hash' and th ~= 'none') or (ti ~= 'zset' and ti ~= 'none') then
  return {'wrongtype'}
end
local seen, cursor_key, buckets, totals = m .. 'seen', m .. 'cursor', m .. 'buckets', m .. 'totals'
local batch, lookback, width = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local settle, budget_us = tonumber(ARGV[4]), tonumber(ARGV[5])
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local started = now_us()
local function intercard(a, b)
  local n = redis.pcall('ZINTERCARD', 2, a, b)
  if type(n) == 'table' and n.err then  -- Redis < 7: count through a scratch key
    local tmp = m .. 'tmp'
    redis.call('ZINTERSTORE', tmp, 2, a, b, 'WEIGHTS', 1, 0)
    n = redis.call('ZCARD', tmp)
    redis.call('DEL', tmp)
  end
  return n
end
local function route_of(v)
  local ex, rk = string.match(string.sub(v, -512),
    '}%s*,%s*"([^"\\]*)"%s*,%s*"([^"\\]*)"%s*%]%s*$')
  if ex then return ex .. '\31' .. rk end
  local ok, d = pcall(cjson.decode, v)
  if not ok or type(d) ~= 'table' then return '!' end
  ex, rk = d[2], d[3]
  if type(ex) ~= 'string' then ex = '' end
  if type(rk) ~= 'string' then rk = '' end
  return ex .. '\31' .. rk
end
-- 1. Attribute new deliveries.
local cursor = redis.call('GET', cursor_key)
local from = '-inf'
if cursor then from = '(' .. cursor end
local new = redis.call('ZRANGEBYSCORE', index, from, '+inf', 'WITHSCORES', 'LIMIT', 0, batch)
local dirty, last, stopped = {}, nil, false
for i = 1, #new, 2 do
  local tag, score = new[i], new[i + 1]
  -- Redis runs nothing else meanwhile: stop after the time budget, the next
  -- sample goes on from here.
  if i % 128 == 1 and i > 1 and now_us() - started > budget_us then
    stopped = true
    break
  end
  if not redis.call('ZSCORE', seen, tag) then
    local v = redis.call('HGET', hash, tag)
    local route = '!'  -- no body (being acked right now), or not kombu's format
    if v then route = route_of(v) end
    local b = tostring(math.floor(tonumber(score) / width))
    redis.call('ZADD', seen, score, tag)
    redis.call('ZADD', m .. 'b:' .. b .. ':' .. route, score, tag)
    redis.call('SADD', m .. 'r:' .. b, route)
    redis.call('SADD', buckets, b)
    dirty[b] = true
  end
  last = score
end
if last and (stopped or #new == 2 * batch) then
  cursor = last  -- a backlog: go on from here next time
elseif last then
  -- Caught up. The cursor trails the newest delivery by ``settle`` seconds:
  -- a worker stamps the time, then writes it, so a delivery can land just
  -- behind a newer one; the tags in between are re-read next time (those
  -- already seen cost a ZSCORE each).
  local c = tonumber(last) - settle
  if cursor and c < tonumber(cursor) then c = tonumber(cursor) end
  cursor = string.format('%.17g', c)
end
-- 2. Count per bucket and route.
-- Scores stay strings in commands: Lua's tostring keeps 14 digits and could
-- round a delivery time up, past the tag it names.
local oldest_s = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')[2]
local oldest = oldest_s and tonumber(oldest_s)
local recent = (cursor and tonumber(cursor) or 0) - lookback
local per_route, attributed = {}, 0
for _, b in ipairs(redis.call('SMEMBERS', buckets)) do
  local lo = tonumber(b) * width
  local hi = lo + width
  local routes = m .. 'r:' .. b
  if not oldest or hi <= oldest then  -- everything in it was acked
    for _, route in ipairs(redis.call('SMEMBERS', routes)) do
      redis.call('DEL', m .. 'b:' .. b .. ':' .. route)
    end
    redis.call('DEL', routes, m .. 'c:' .. b)
    redis.call('HDEL', totals, b)
    redis.call('SREM', buckets, b)
  else
    local in_index = redis.call('ZCOUNT', index, string.format('%.17g', lo),
                                '(' .. string.format('%.17g', hi))
    local counted = tonumber(redis.call('HGET', totals, b) or '-1')
    if dirty[b] or hi > recent or in_index ~= counted then
      local sum = 0
      for _, route in ipairs(redis.call('SMEMBERS', routes)) do
        local key = m .. 'b:' .. b .. ':' .. route
        redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. oldest_s)
        local n = intercard(index, key)
        if n == 0 then
          redis.call('DEL', key)
          redis.call('SREM', routes, route)
          redis.call('HDEL', m .. 'c:' .. b, route)
        else
          redis.call('HSET', m .. 'c:' .. b, route, n)
          sum = sum + n
        end
      end
      redis.call('HSET', totals, b, sum)
    end
    local counts = redis.call('HGETALL', m .. 'c:' .. b)
    for i = 1, #counts, 2 do
      local n = tonumber(counts[i + 1])
      per_route[counts[i]] = (per_route[counts[i]] or 0) + n
      attributed = attributed + n
    end
  end
end
if oldest then redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. oldest_s)
else redis.call('DEL', seen) end
-- Every attributed tag is in exactly one bucket and route: the rest of the index is not.
local unattributed = redis.call('ZCARD', index) - attributed
local behind_key = m .. 'behind'
if unattributed > 0 and #new < 2 * batch and not stopped and cursor then
  -- Entries behind the cursor: step back so the next samples pick them up.
  cursor = string.format('%.17g', tonumber(cursor) - lookback)
  if redis.call('INCR', behind_key) >= 3 then
    -- Still not attributed after stepping back twice: the mirror lost keys
    -- (eviction, a manual DEL). Forget what was seen, so every delivery is
    -- attributed again (UNACKED_BATCH per sample) and the counts heal.
    redis.call('DEL', seen, behind_key)
    cursor = nil
    redis.call('DEL', cursor_key)
  end
elseif unattributed == 0 then
  redis.call('DEL', behind_key)
end
if cursor then redis.call('SET', cursor_key, cursor) end
local out = {'ok', unattributed}
for route, n in pairs(per_route) do
  out[#out + 1] = route
  out[#out + 1] = n
end
return out
"""


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


def _count_routes(
    client: Any,
    routes: Counter[tuple[str, str]],
    queues: list[str],
    binding_key_fmt: str,
    sep: str,
) -> dict[str, int]:
    """Map unacked counts per ``(exchange, routing_key)`` to queues.

    kombu's unacked hash does not record the queue a message came from, so it
    is mapped back the way kombu restores it (``Channel._lookup``):

    * exchange ``""`` (Celery's default for ``task_create_missing_queues``
      and ``send_task(queue=...)``): the routing key is the queue;
    * a named exchange: its binding table ``_kombu.binding.<exchange>``
      (members ``routing_key SEP pattern SEP queue``) is read; a binding with
      a pattern (only topic exchanges store one, a regex) matches by regex,
      one without matches the exact routing key (kombu's default for an
      exchange it has not seen declared is ``direct``). A fanout exchange
      looks like a direct one here; Celery's fanout consumers do not ack.

    A message whose routing matches several queues counts under each of them.
    """
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
