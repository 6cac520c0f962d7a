"""tasker.broker_client's poller change: a waiting channel is skipped, nothing else is."""

from __future__ import annotations

import types
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis

from tasker import broker_client


@pytest.fixture
def installed():  # type: ignore[no-untyped-def]
    was = broker_client.installed()
    broker_client.install()
    yield
    if not was:
        broker_client.uninstall()


class Client:
    """A redis client's one attribute the poller reads (hashable, as redis.Redis is)."""

    def __init__(self) -> None:
        self.connection = types.SimpleNamespace(_sock=object())


class Channel:
    def __init__(self, in_flight: bool, registered: bool, fanout: bool = False) -> None:
        self.client = Client()
        self._in_poll = self.client.connection if in_flight else None
        self.active_queues = ["q"]
        self.active_fanout_queues = ["f"] if fanout else []
        self.qos = types.SimpleNamespace(can_consume=lambda: True)
        self.registered = registered


def _poller(channels: list[Channel]) -> Any:
    poller = kombu_redis.MultiChannelPoller.__new__(kombu_redis.MultiChannelPoller)
    poller._channels = set(channels)
    poller._chan_to_sock = {(c, c.client, "BRPOP"): c.client.connection._sock
                            for c in channels if c.registered}
    poller.calls = []
    poller._update_brpop_polling = lambda: poller.calls.append("update")
    poller._register_BRPOP = lambda c: poller.calls.append(("BRPOP", c))
    poller._register_LISTEN = lambda c: poller.calls.append(("LISTEN", c))
    return poller


@pytest.mark.skipif(broker_client._poller_classes() is None,
                    reason="the poller change is for kombu 5.7 only")
def test_only_a_channel_waiting_on_its_registered_socket_is_skipped(installed) -> None:
    waiting = Channel(in_flight=True, registered=True)
    waiting_fanout = Channel(in_flight=True, registered=True, fanout=True)
    not_sent = Channel(in_flight=False, registered=True)
    unregistered = Channel(in_flight=True, registered=False)
    stale = Channel(in_flight=True, registered=True)
    stale.client.connection = types.SimpleNamespace(_sock=object())  # reconnected since
    poller = _poller([waiting, waiting_fanout, not_sent, unregistered, stale])
    kombu_redis.MultiChannelPoller.on_poll_start(poller)
    assert poller.calls[0] == "update"
    called = set(poller.calls[1:])
    assert called == {("LISTEN", waiting_fanout), ("BRPOP", not_sent),
                      ("BRPOP", unregistered), ("BRPOP", stale)}


def test_uninstall_restores_kombus_poller() -> None:
    if broker_client._poller_classes() is None:
        pytest.skip("the poller change is for kombu 5.7 only")
    was = broker_client.installed()
    broker_client.install()
    assert hasattr(kombu_redis.MultiChannelPoller.on_poll_start, "__wrapped__")
    assert hasattr(kombu_redis.Transport.register_with_event_loop, "__wrapped__")
    broker_client.uninstall()
    assert not hasattr(kombu_redis.MultiChannelPoller.on_poll_start, "__wrapped__")
    assert not hasattr(kombu_redis.Transport.register_with_event_loop, "__wrapped__")
    if was:
        broker_client.install()
