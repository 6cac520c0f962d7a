"""One redis-py client per kombu Redis channel, instead of one per command.

kombu's Redis transport builds a new ``redis.Redis`` object for every
synchronous command it sends (``Channel.conn_or_acquire`` calls
``_create_client``), and a worker sends two per task: one when a message is
taken (its copy goes into the ``unacked`` hash) and one when it is acked.
Building a ``redis.Redis`` fills its table of about 170 response callbacks:
about 90 µs of the MainProcess's CPU each, measured on this machine with
redis-py 8.1 and kombu 5.7. The MainProcess is what limits a prefork
worker's throughput, so those two objects cost every task about 0.2 ms of
its 1.1-1.4 ms there. (``bench/overhead.py``'s ``bare_client_reuse`` variant
measures bare Celery with this change alone.)

The object holds no connection of its own: each command or pipeline takes one
from the channel's connection pool, exactly as a new object would. So one
object per channel and pool does the same work. A channel whose pool is
replaced (after a connection error) gets a new object with the new pool.

**The poller's turn.** At every turn of the worker's event loop (about 1.5
per task), kombu's Redis transport walks every consuming channel: it checks
the channel's credit, rebuilds its queue list, looks its ``BRPOP``
registration up, and registers each socket with epoll again (which fails
with ``EEXIST``, an exception caught every time). For a channel whose
``BRPOP`` is already waiting on a registered socket, none of that changes
anything; a node with a second consuming channel that is mostly idle
(tasker's periodic work) paid about 49 Python calls per task for it. So,
for kombu 5.7 (whose code this mirrors; other versions keep theirs):

* ``MultiChannelPoller.on_poll_start`` skips a channel whose ``BRPOP`` is in
  flight on the connection it was sent on, that connection still has its
  socket, and the socket is the one registered (exactly when kombu's own
  ``_register_BRPOP`` would do nothing); its ``LISTEN`` side is still
  looked after, and everything else goes through kombu's code;
* the per-turn re-registration of each socket is an ``epoll.modify`` to the
  same events when the loop already has that socket's reader (no exception;
  a socket epoll no longer watches fails it and is registered as before).

**The unacked copy.** kombu's Redis QoS keeps a copy of every message it
delivers in the ``unacked`` hash (``[message, exchange, routing_key]`` as
JSON, what it restores from when a worker is lost), and makes it by encoding
again the message it has just decoded: about 90,000 instructions a message in
the MainProcess (``bench.instructions``: bare Celery's MainProcess 1,909k ->
1,818k per task), more for bigger messages (tasker's two headers cost
+17,800 through it and the decoding). The text the message was decoded from
is that JSON already. So, for kombu 5.7: the transport's ``loads`` keeps the
text beside a decoded message (a ``dict`` subclass, :class:`_Received`), and
``QoS.append`` splices it into the copy; a message without one (decoded
elsewhere) is encoded as before. kombu's ``loads`` reads the copy back
unchanged.

Installed by :mod:`tasker.celeryconfig` unless ``TASKER_REUSE_BROKER_CLIENT``
is false (all three changes: ``bench.overhead``'s ``bare_client_reuse``
measures bare Celery with them).

Part of tasker's contract with kombu and redis-py (:mod:`tasker.contracts`):
the private names used are kombu's ``Channel._create_client``,
``Channel._in_poll``, ``MultiChannelPoller._channels``, ``._chan_to_sock``,
``._update_brpop_polling``, ``._register_BRPOP``, ``._register_LISTEN``, the
hub poller's ``_epoll``, redis-py's ``Connection._sock``, and for the
unacked copy the transport module's ``loads``, ``QoS.append`` (with
``Message._raw``, ``QoS.pipe_or_acquire``, ``unacked_key``,
``unacked_index_key``). :func:`check_create_client`, :func:`check_poller` and
:func:`check_unacked_copy` prove them on the
installed versions; :func:`install` runs them first and changes nothing a
check refuses (kombu's own code runs then: the fallback). This file imports
nothing from tasker, so that ``bench.bare_app`` can load it alone by path.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from typing import Any

__all__ = ["install", "uninstall", "installed", "check_create_client", "check_poller",
           "check_unacked_copy"]

#: Where the cached client lives on a channel: (the pool it was made for, client).
_CACHE_ATTRIBUTE = "_tasker_sync_client"
#: The kombu whose poller code the poller change mirrors.
_POLLER_KOMBU = "5.7."


def _reusing(original: Any) -> Any:
    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            # The asynchronous client is already one per channel (kombu's
            # ``Channel.client`` is a cached property); kombu sets its
            # ``connection`` attribute, so it must not be shared with this one.
            return original(self, asynchronous)
        pool = self.pool
        cached = self.__dict__.get(_CACHE_ATTRIBUTE)
        if cached is not None and cached[0] is pool:
            return cached[1]
        client = original(self, False)
        self.__dict__[_CACHE_ATTRIBUTE] = (pool, client)
        return client

    _create_client.__wrapped__ = original  # type: ignore[attr-defined]
    _create_client.__doc__ = original.__doc__
    return _create_client


def _channel_class() -> Any:
    try:
        from kombu.transport import redis as kombu_redis  # lazy: 69 ms (node start, Redis broker)
    except ImportError:  # pragma: no cover - kombu without the redis extra
        return None
    return kombu_redis.Channel


def _skipping_waiting_channels(original: Any) -> Any:
    """``MultiChannelPoller.on_poll_start`` that skips a channel with nothing to do."""

    def on_poll_start(self: Any) -> None:
        self._update_brpop_polling()
        registered = self._chan_to_sock
        for channel in self._channels:
            in_poll = channel._in_poll
            if in_poll:
                # What _register_BRPOP checks, without its calls: the BRPOP sent
                # on this client's connection, whose socket is the registered one.
                client = channel.__dict__.get("client")
                sock = registered.get((channel, client, "BRPOP"))
                if (sock is not None and getattr(client, "connection", None) is in_poll
                        and in_poll._sock is sock):
                    if channel.active_fanout_queues:
                        self._register_LISTEN(channel)
                    continue
            if channel.active_queues and channel.qos.can_consume():  # kombu's own steps
                self._register_BRPOP(channel)
            if channel.active_fanout_queues:
                self._register_LISTEN(channel)

    on_poll_start.__wrapped__ = original  # type: ignore[attr-defined]
    return on_poll_start


def _modifying_registered_sockets(original: Any) -> Any:
    """``Transport.register_with_event_loop`` whose per-turn step does not re-register."""

    def register_with_event_loop(self: Any, connection: Any, loop: Any) -> Any:
        before = set(loop.on_tick)
        result = original(self, connection, loop)
        added = [cb for cb in loop.on_tick
                 if cb not in before and getattr(cb, "__name__", "") == "on_poll_start"]
        epoll = getattr(getattr(loop, "poller", None), "_epoll", None)
        modify = getattr(epoll, "modify", None)
        if len(added) != 1 or modify is None:
            return result  # not the kombu this mirrors: keep its step
        from kombu.asynchronous.hub import ERR, READ  # loaded with the hub already

        cycle = self.cycle
        poll_start = cycle.on_poll_start
        readers, writers, add_reader = loop.readers, loop.writers, loop.add_reader
        on_readable = self.on_readable
        events = READ | ERR

        def on_poll_start() -> None:
            poll_start()
            for fd in cycle.fds:
                if fd not in writers and readers.get(fd) == (on_readable, (fd,)):
                    try:
                        modify(fd, events)  # kombu's register of a watched fd: a no-op
                        continue
                    except OSError:  # not watched any more (closed, reused): register
                        pass
                add_reader(fd, on_readable, fd)

        loop.on_tick.discard(added[0])
        loop.on_tick.add(on_poll_start)
        return result

    register_with_event_loop.__wrapped__ = original  # type: ignore[attr-defined]
    return register_with_event_loop


class _Received(dict):
    """A message as kombu's Redis transport decoded it, with the JSON text it came as."""

    __slots__ = ("text",)


def _keeping_text(original: Any) -> Any:
    """The transport's ``loads``: a decoded message keeps the text it was decoded from."""

    def loads(s: Any, *args: Any, **kwargs: Any) -> Any:
        value = original(s, *args, **kwargs)
        if value.__class__ is dict and s.__class__ is str and not args and not kwargs:
            kept = _Received(value)
            kept.text = s
            return kept
        return value  # the restore path's [message, exchange, routing_key], other callers

    loads.__wrapped__ = original  # type: ignore[attr-defined]
    return loads


def _appending_kept_text(original: Any, base_append: Any) -> Any:
    """``QoS.append`` (kombu 5.7's, see :func:`check_unacked_copy`) without the re-encoding.

    Between ``loads`` and this call kombu only reads the message (its
    ``Message.__init__``), so the kept text is what kombu would encode; the
    exchange and routing key are encoded as kombu does (``json.dumps``).
    """

    dumps, now = json.dumps, time.time

    def append(self: Any, message: Any, delivery_tag: Any) -> None:
        raw = message._raw
        text = raw.text if raw.__class__ is _Received else None
        if text is None:  # decoded elsewhere, or its copy made already: kombu's own way
            return original(self, message, delivery_tag)
        delivery = message.delivery_info
        copy = f"[{text}, {dumps(delivery['exchange'])}, {dumps(delivery['routing_key'])}]"
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: now()}) \
                .hset(self.unacked_key, delivery_tag, copy) \
                .execute()
            base_append(self, message, delivery_tag)  # kombu's virtual QoS.append
        raw.text = None  # not needed again: a reserved message keeps one copy, not two

    append.__wrapped__ = original  # type: ignore[attr-defined]
    return append


#: sha256 (first 16 hex digits) of the kombu 5.7.0 code the unacked copy
#: relies on: QoS.append (mirrored); everything between the text read and
#: append (the virtual channel's basic_consume and basic_get, both Message
#: classes' __init__, the transport's _deliver and _reject_inbound_message:
#: nothing changes the message); the Redis channel's _brpop_read, _get and
#: _receive_one and kombu's json loads (the message decoded straight from the
#: text read). Other code: kombu's own.
_UNACKED_SOURCE = "11f064509c21598f"


def _unacked_source_digest() -> str:

    from kombu import message as kombu_message  # beside the transport (loaded already)
    from kombu.transport import redis as kombu_redis  # lazy: 69 ms (node start, Redis broker)
    from kombu.transport import virtual  # lazy: with the Redis transport
    from kombu.utils import json as kombu_json

    parts = (getattr(kombu_redis.QoS.append, "__wrapped__", kombu_redis.QoS.append),
             virtual.Channel.basic_consume, virtual.Channel.basic_get,
             virtual.Message.__init__, kombu_message.Message.__init__,
             virtual.Transport._deliver, virtual.Transport._reject_inbound_message,
             kombu_redis.Channel._brpop_read, kombu_redis.Channel._get,
             kombu_redis.Channel._receive_one,
             getattr(kombu_json.loads, "__wrapped__", kombu_json.loads))
    source = "".join(inspect.getsource(f) for f in parts)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def check_unacked_copy() -> None:
    """The kombu code the unacked copy mirrors and relies on is the installed code."""
    from kombu.transport import redis as kombu_redis  # lazy: 69 ms (node start, Redis broker)
    from kombu.transport import virtual  # lazy: with the Redis transport

    digest = _unacked_source_digest()
    if digest != _UNACKED_SOURCE:
        raise AssertionError(f"kombu's unacked-copy code is not the code mirrored ({digest})")
    loads = getattr(kombu_redis.loads, "__wrapped__", kombu_redis.loads)
    if not callable(loads):
        raise AssertionError("kombu.transport.redis.loads is gone")
    if virtual.QoS.append.__qualname__ != "QoS.append":
        raise AssertionError("the virtual QoS has no append of its own")


def _mirrored_transport(check: Any) -> Any:
    """kombu's Redis transport module when it is the kombu mirrored and ``check`` passes."""
    try:
        import kombu  # beside the transport it checks (loaded already)
        from kombu.transport import redis as kombu_redis  # lazy: 69 ms (node start, Redis broker)
    except ImportError:  # pragma: no cover - kombu without the redis extra
        return None
    if not kombu.__version__.startswith(_POLLER_KOMBU):
        return None
    try:
        check()
    except Exception:  # noqa: BLE001 - another shape: kombu's own code runs
        return None
    return kombu_redis


def _unacked_copy_classes() -> Any:
    return _mirrored_transport(check_unacked_copy)


def _poller_classes() -> tuple[Any, Any] | None:
    module = _mirrored_transport(check_poller)
    return None if module is None else (module.MultiChannelPoller, module.Transport)


def check_create_client() -> None:
    """kombu's channel builds its synchronous clients through ``_create_client(asynchronous)``."""
    channel = _channel_class()
    if channel is None:
        return  # no Redis transport: nothing is changed
    create = getattr(channel._create_client, "__wrapped__", channel._create_client)
    params = list(inspect.signature(create).parameters)
    if params[:2] != ["self", "asynchronous"]:
        raise AssertionError(f"Channel._create_client{tuple(params)}")
    if "_create_client(" not in inspect.getsource(channel.conn_or_acquire):
        raise AssertionError("Channel.conn_or_acquire does not call _create_client")


#: sha256 (first 16 hex digits) of the kombu code the poller change mirrors:
#: MultiChannelPoller.on_poll_start, _register_BRPOP, _client_registered and
#: Transport.register_with_event_loop of kombu 5.7.0. Other code: kombu's own.
_POLLER_SOURCE = "dbc6f7639326ca3f"


def _poller_source_digest() -> str:

    from kombu.transport import redis as kombu_redis  # lazy: 69 ms (node start, Redis broker)

    cycle, transport = kombu_redis.MultiChannelPoller, kombu_redis.Transport
    parts = (getattr(cycle.on_poll_start, "__wrapped__", cycle.on_poll_start),
             cycle._register_BRPOP, cycle._client_registered,
             getattr(transport.register_with_event_loop, "__wrapped__",
                     transport.register_with_event_loop))
    source = "".join(inspect.getsource(f) for f in parts)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def check_poller() -> None:
    """The kombu code the poller change mirrors is the installed code, and the
    private attributes it reads are there (kombu's and redis-py's)."""
    import redis  # lazy: redis-py is needed only with a Redis broker
    from kombu.transport import redis as kombu_redis  # lazy: 69 ms (node start, Redis broker)
    from kombu.utils.eventio import poll  # beside the check that uses it (loaded already)

    digest = _poller_source_digest()
    if digest != _POLLER_SOURCE:
        raise AssertionError(f"kombu's poller code is not the code mirrored ({digest})")
    if not hasattr(kombu_redis.Channel, "_in_poll"):
        raise AssertionError("Channel._in_poll is gone")
    cycle = kombu_redis.MultiChannelPoller()
    try:
        if not isinstance(cycle._channels, set) or not isinstance(cycle._chan_to_sock, dict):
            raise AssertionError("MultiChannelPoller's _channels/_chan_to_sock changed type")
    finally:
        cycle.close()
    if "_sock" not in vars(redis.connection.Connection()):
        raise AssertionError("redis-py's Connection keeps no _sock")
    p = poll()
    try:
        if not callable(getattr(getattr(p, "_epoll", None), "modify", None)):
            raise AssertionError("kombu's epoll poller keeps no _epoll")
    finally:
        p.close()


def installed() -> bool:
    """Whether kombu's Redis channels reuse their synchronous client."""
    channel = _channel_class()
    return channel is not None and hasattr(channel._create_client, "__wrapped__")


def install() -> bool:
    """Make kombu's Redis channels reuse one synchronous client; idempotent.

    Returns False where kombu's Redis transport is not importable, or where
    its channel's ``_create_client`` fails :func:`check_create_client` (a
    kombu this was not written for): nothing is changed then. The poller
    change is made only on the kombu it mirrors, and only if
    :func:`check_poller` passes.
    """
    channel = _channel_class()
    if channel is None or not callable(getattr(channel, "_create_client", None)):
        return False
    try:
        check_create_client()
    except Exception:  # noqa: BLE001 - another shape: nothing is changed
        return False
    if not installed():
        channel._create_client = _reusing(channel._create_client)
    poller = _poller_classes()
    if poller is not None:
        cycle, transport = poller
        if not hasattr(cycle.on_poll_start, "__wrapped__"):
            cycle.on_poll_start = _skipping_waiting_channels(cycle.on_poll_start)
        if not hasattr(transport.register_with_event_loop, "__wrapped__"):
            transport.register_with_event_loop = _modifying_registered_sockets(
                transport.register_with_event_loop)
    module = _unacked_copy_classes()
    if module is not None:
        if not hasattr(module.loads, "__wrapped__"):
            module.loads = _keeping_text(module.loads)
        if not hasattr(module.QoS.append, "__wrapped__"):
            from kombu.transport import virtual  # lazy: with the Redis transport

            module.QoS.append = _appending_kept_text(module.QoS.append, virtual.QoS.append)
    return True


def uninstall() -> None:
    """Restore kombu's own ``_create_client`` (tests)."""
    channel = _channel_class()
    if channel is not None and installed():
        channel._create_client = channel._create_client.__wrapped__
    poller = _poller_classes()
    if poller is not None:
        cycle, transport = poller
        if hasattr(cycle.on_poll_start, "__wrapped__"):
            cycle.on_poll_start = cycle.on_poll_start.__wrapped__
        if hasattr(transport.register_with_event_loop, "__wrapped__"):
            transport.register_with_event_loop = transport.register_with_event_loop.__wrapped__
    module = _unacked_copy_classes()
    if module is not None:
        if hasattr(module.loads, "__wrapped__"):
            module.loads = module.loads.__wrapped__
        if hasattr(module.QoS.append, "__wrapped__"):
            module.QoS.append = module.QoS.append.__wrapped__
