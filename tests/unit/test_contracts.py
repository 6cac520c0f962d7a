"""tasker's contract with Celery, kombu, billiard, redis-py and prometheus_client.

The start check passes on the installed versions; with a touch broken (a
library attribute taken away, the file-key shape changed) tasker falls back
or stops with one clear line, and never serves an empty scrape silently.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import mmap_dict
from prometheus_client.mmap_dict import MmapedDict

from tasker import contracts
from tasker.contracts import base, celery_worker, kombu_redis, prometheus
from tasker.metrics.store import MetricStore

TASKER = Path(__file__).resolve().parents[2] / "tasker"


def _future_mmap_key(metric_name: str, name: str, labelnames: Any, labelvalues: Any,
                     help_text: str) -> str:
    """A key shape a later prometheus_client might write (one more field)."""
    labels = dict(zip(labelnames, labelvalues))
    return json.dumps([metric_name, name, labels, help_text, "counter"], sort_keys=True)


def _one_line_naming(text: str, *words: str) -> None:
    assert "\n" not in text, text
    for word in words:
        assert word in text, (word, text)


# -- the installed versions ------------------------------------------------------


def test_every_touch_checks_out_on_the_installed_versions() -> None:
    assert contracts.check() == []


def test_every_library_has_a_tested_range_and_the_installed_one_is_in_it() -> None:
    for library in ("celery", "kombu", "billiard", "redis", "prometheus-client"):
        assert library in base.TESTED
        assert base.outside_tested(library) is None, base.installed_version(library)


def test_the_tested_range_is_the_one_pyproject_and_ci_use() -> None:
    root = TASKER.parent
    pyproject = (root / "pyproject.toml").read_text()
    oldest = dict(line.split("==") for line in (root / ".ci/oldest-constraints.txt")
                  .read_text().splitlines() if line and not line.startswith("#"))
    for library, (low, high) in base.TESTED.items():
        spec = "celery[redis]" if library == "celery" else library
        low_text = oldest[library]
        assert tuple(map(int, low_text.split(".")[:2])) == low, library
        bound = f'"{spec}>={low_text},<{high[0]}.{high[1] + 1}"'
        assert bound in pyproject, bound


def test_a_version_outside_the_tested_range_is_one_warning_not_a_stop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(base.TESTED, "kombu", ((9, 0), (9, 1)))
    lines = contracts.check()
    assert len(lines) == 1
    _one_line_naming(lines[0], "kombu", base.installed_version("kombu"), "outside")


# -- prometheus_client: stop ----------------------------------------------------


def test_a_changed_file_key_shape_stops_the_node_with_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mmap_dict, "mmap_key", _future_mmap_key)
    with pytest.raises(contracts.ContractBroken) as raised:
        contracts.check()
    _one_line_naming(str(raised.value), "prometheus-client",
                     base.installed_version("prometheus-client"), "mmap_key", "stopping")


def test_a_changed_file_layout_stops_the_node_with_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def unpadded_init_value(self: Any, key: str) -> None:  # entries no longer 8-byte aligned
        encoded = key.encode("utf-8")
        value = struct.pack(f"=i{len(encoded)}sdd", len(encoded), encoded, 0.0, 0.0)
        self._m[self._used:self._used + len(value)] = value
        self._used += len(value)
        self._m[0:4] = struct.pack("=i", self._used)
        self._positions[key] = self._used - 16

    monkeypatch.setattr(MmapedDict, "_init_value", unpadded_init_value)
    with pytest.raises(contracts.ContractBroken) as raised:
        contracts.check()
    _one_line_naming(str(raised.value), "prometheus-client", "file layout", "stopping")


def test_a_broken_touch_stops_the_worker_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mmap_dict, "mmap_key", _future_mmap_key)
    with pytest.raises(SystemExit) as raised:
        contracts.check_at_start()
    _one_line_naming(str(raised.value.code), "tasker: prometheus-client", "stopping")


def test_a_key_of_unknown_shape_is_never_an_empty_scrape_said_nowhere(tmp_path: Path) -> None:
    """What a later prometheus_client's files would do to the store (the old store
    read them as entries not written yet: an empty scrape, and not a word)."""
    d = MmapedDict(str(tmp_path / "counter_1.db"))
    d.write_value(_future_mmap_key("tt_tasks", "tt_tasks_total", ["task"], ["a"], "h"), 3.0,
                  0.0)
    d.close()
    store = MetricStore(str(tmp_path), is_alive=lambda owner: True)
    try:
        families = store.read().families()
    except ValueError as exc:  # the scrape fails, with one line that says why
        _one_line_naming(str(exc), "prometheus-client", "unknown shape", "tasker.contracts")
    else:
        assert families, "an empty scrape, and nothing said"


# -- prometheus_client: fall back -----------------------------------------------


def test_children_of_another_layout_fall_back_to_the_public_methods(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.metrics import Counter as CounterClass

    from tasker.metrics import recording
    from tasker.metrics.values import add_each

    original = CounterClass._metric_init

    def moved(self: Any) -> None:  # a later version keeping the value elsewhere
        original(self)
        self._stored = self.__dict__.pop("_value")

    monkeypatch.setattr(prometheus, "_children_reachable", True)  # restored afterwards
    monkeypatch.setattr(CounterClass, "_metric_init", moved)
    lines = contracts.check()
    assert len(lines) == 1
    _one_line_naming(lines[0], "prometheus-client", "_value", "falling back", "inc()")
    monkeypatch.setattr(CounterClass, "_metric_init", original)
    c = Counter("tt_c", "c", ["l"], registry=None)
    g = Gauge("tt_g", "g", ["l"], registry=None, multiprocess_mode="livesum")
    h = Histogram("tt_h", "h", ["l"], registry=None)
    series = recording._TaskSeries.of(c.labels("a"), c.labels("b"), h.labels("a"),
                                      h.labels("b"), g.labels("a"))
    assert series.add is add_each  # the public inc()/observe(), one by one


def test_no_label_lock_falls_back_to_no_renewal(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client.metrics import MetricWrapperBase

    original = MetricWrapperBase.__init__

    def without_lock(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.__dict__.pop("_lock", None)

    monkeypatch.setattr(prometheus, "_label_lock_known", True)
    monkeypatch.setattr(MetricWrapperBase, "__init__", without_lock)
    lines = contracts.check()  # (the children's check fails too: labels() needs the lock)
    assert any("_lock" in line and "falling back" in line for line in lines), lines


# -- kombu ------------------------------------------------------------------------


def test_priority_keys_are_kombus() -> None:
    from kombu.transport.redis import Channel

    assert kombu_redis.priority_list_keys("q", Channel.priority_steps, Channel.sep) == [
        "q", *(f"q{Channel.sep}{s}" for s in Channel.priority_steps[1:])]


def test_a_changed_priority_key_scheme_stops_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    from kombu.transport.redis import Channel

    monkeypatch.setattr(Channel, "_q_for_pri",
                        lambda self, queue, pri: f"{queue}:pri:{self.priority(pri)}")
    with pytest.raises(contracts.ContractBroken) as raised:
        contracts.check()
    _one_line_naming(str(raised.value), "kombu", base.installed_version("kombu"),
                     "_q_for_pri", "stopping")


def test_a_timer_of_another_shape_makes_the_scheduled_count_unknown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kombu.asynchronous.timer import Timer

    monkeypatch.setattr(kombu_redis, "_timer_known", True)
    monkeypatch.setattr(Timer, "queue", property(lambda self: [("eta", "entry")]))
    lines = contracts.check()
    assert len(lines) == 1
    _one_line_naming(lines[0], "kombu", "Timer.queue", "falling back", "scheduled")
    assert kombu_redis.timer_entry_args(Timer()) is None


def test_a_channel_without_create_client_is_left_as_it_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kombu.transport.redis import Channel

    from tasker.contracts import kombu_client

    was = kombu_client.installed()
    kombu_client.uninstall()
    try:
        monkeypatch.setattr(Channel, "_create_client", lambda self, pool, asynchronous: None)
        lines = contracts.check()
        assert len(lines) == 1 and "_create_client" in lines[0], lines
        assert kombu_client.install() is False
        assert not kombu_client.installed()
    finally:
        monkeypatch.undo()
        if was:
            kombu_client.install()


def test_another_unacked_layout_turns_the_unacked_counts_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker sampler reads kombu's unacked hash and binding sets in a script of its
    own: with another layout it would count wrong, so it counts nothing, and says so."""
    from kombu.transport.redis import Channel

    assert kombu_redis.unacked_layout_known()
    monkeypatch.setattr(Channel, "keyprefix_queue", "_kombu.bindings.%s")
    try:
        lines = contracts.check()
        assert len(lines) == 1, lines
        _one_line_naming(lines[0], "kombu", "unacked", "falling back", "not sampled")
        assert not kombu_redis.unacked_layout_known()
    finally:
        monkeypatch.undo()
        kombu_redis.check_unacked_layout()
    assert kombu_redis.unacked_layout_known()


def test_unacked_copy_of_other_kombu_code_is_kombus_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The unacked copy mirrors kombu 5.7.0's ``QoS.append``: other code keeps kombu's own."""
    from kombu.transport import redis as kombu_redis

    from tasker.contracts import kombu_client

    was = kombu_client.installed()
    kombu_client.uninstall()
    try:
        assert not hasattr(kombu_redis.QoS.append, "__wrapped__")
        monkeypatch.setattr(kombu_client, "_UNACKED_SOURCE", "0" * 16)  # "another kombu"
        lines = contracts.check()
        assert len(lines) == 1, lines
        _one_line_naming(lines[0], "kombu", "QoS.append", "falling back", "encodes")
        assert kombu_client.install() is True  # the client reuse still goes in
        assert not hasattr(kombu_redis.QoS.append, "__wrapped__")
        assert not hasattr(kombu_redis.loads, "__wrapped__")
        monkeypatch.undo()
        kombu_client.uninstall()
        assert kombu_client.install() is True
        assert hasattr(kombu_redis.QoS.append, "__wrapped__")
    finally:
        monkeypatch.undo()
        kombu_client.uninstall()
        if was:
            kombu_client.install()


# -- celery -----------------------------------------------------------------------


def test_without_celerys_private_current_task_the_public_proxy_is_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(celery_worker, "current_task", celery_worker.current_task)
    monkeypatch.setattr(celery_worker, "_private_current_task", None)
    lines = contracts.check()
    assert len(lines) == 1
    _one_line_naming(lines[0], "celery", "get_current_task", "falling back")
    assert celery_worker.current_task is celery_worker._public_current_task
    assert celery_worker.current_task() is None


def test_a_consumer_without_on_decode_error_is_not_wrapped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.worker.consumer import tasks

    monkeypatch.setattr(celery_worker, "_broken", set())
    monkeypatch.setattr(tasks.Tasks, "start", lambda self, c: None)  # binds no handler
    lines = contracts.check()
    assert any("on_decode_error" in line and "falling back" in line for line in lines), lines

    class C:
        def on_decode_error(self, message: Any, exc: BaseException) -> None: ...

    c = C()
    assert celery_worker.wrap_decode_error_handler(c, lambda original: None) is False
    assert c.on_decode_error is not None


# -- the private names live in tasker.contracts only ---------------------------------

#: Private names of the five libraries that tasker uses (receivers other than self).
_PRIVATE = re.compile(
    r"(?<!self)\.(_value|_buckets|_sum|_upper_bounds|_lock|_positions|_m|_used|_f|"
    r"_init_value|_create_client|_in_poll|_sock|_epoll|_chan_to_sock|_channels|"
    r"_q_for_pri|_register_BRPOP|_register_LISTEN|_update_brpop_polling)\b"
    r"|celery\._state|\bValueClass\b|\bmmap_key\(|prometheus_client\.mmap_dict|timer\.queue")


def test_private_names_are_used_in_tasker_contracts_only() -> None:
    found = []
    for path in sorted(TASKER.rglob("*.py")):
        if "contracts" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PRIVATE.search(code) and not code.lstrip().startswith(("\"", "'", "``")):
                found.append(f"{path.relative_to(TASKER.parent)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_a_worker_node_with_a_broken_touch_stops_before_it_starts() -> None:
    """A real WorkController: worker_init runs the check before any bootstep is built."""
    import subprocess
    import sys

    code = ("import json\n"
            "from prometheus_client import mmap_dict\n"
            "mmap_dict.mmap_key = lambda m, n, ln, lv, h: "
            "json.dumps([m, n, dict(zip(ln, lv)), h, 'x'])\n"
            "from tasker import app\n"
            "app.Worker(pool='solo', concurrency=1, hostname='probe@contracts', quiet=True)\n"
            "print('not stopped')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=TASKER.parent)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "not stopped" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    _one_line_naming(last, "tasker: prometheus-client", "mmap_key", "stopping")
