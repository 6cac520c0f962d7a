"""tasker's contract with prometheus_client: every private name and format it relies on.

What tasker touches, and why:

* ``prometheus_client.values.ValueClass`` (a module global, not documented):
  replaced by tasker's value class, which writes each update straight into
  the process's file (:mod:`tasker.contracts.mmap_values`, about a third of
  the stock cost on every task);
* ``MmapedDict`` and its private ``_positions``, ``_m``, ``_used``, ``_f``,
  ``_init_value``: the value class finds a key's place once and writes there;
  tasker's ``AllocatedMmapedDict`` allocates pages before ``_init_value``
  writes into them;
* the file format itself (``mmap_key``'s JSON list and ``MmapedDict``'s
  entry layout, :mod:`tasker.contracts.mmap_format`): tasker's
  ``MetricStore`` parses the files without prometheus_client, once per
  entry, not at every scrape;
* a metric child's ``_value`` (counter, gauge) and ``_buckets``, ``_sum``,
  ``_upper_bounds`` (histogram): a pool process adds to them directly;
* a labelled metric's ``_lock``: renewed in a forked pool process.

:func:`check` proves each of these on the installed version when tasker
starts (see :mod:`tasker.contracts`). The file layout and key shape have no
public fallback (the store could not read the files: every scrape would be
empty), so a mismatch stops the node; the children's values fall back to
the public ``inc``/``observe`` methods, and the label lock to no renewal.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, mmap_dict, values

from tasker.contracts.base import Touch
from tasker.contracts.mmap_format import (
    FIRST_ENTRY,
    HEADER,
    entry_end,
    parse_key,
    read_used,
)
from tasker.contracts.mmap_values import AllocatedMmapedDict, multiprocess_value_class

__all__ = ["install_value_class", "new_value", "child_value", "histogram_parts",
           "renew_label_lock", "check_key_shape", "check_file_layout", "TOUCHES"]

LIBRARY = "prometheus-client"

# -- the value class ---------------------------------------------------------


def install_value_class(cls: type) -> None:
    """Make prometheus_client create every metric value from now on with ``cls``."""
    values.ValueClass = cls


def new_value(*args: Any, **kwargs: Any) -> Any:
    """A value of the installed value class (tasker's in a worker node)."""
    return values.ValueClass(*args, **kwargs)


# -- metric children ---------------------------------------------------------

#: False when the start check found children of another layout: the callers
#: then use the public ``inc``/``observe`` (see :func:`child_value`).
_children_reachable = True


def child_value(child: Any) -> Any:
    """The value object behind a counter or gauge child (``inc(amount)``, ``get()``).

    Raises AttributeError where the layout is not the checked one: the caller
    goes through the child's public methods instead.
    """
    if not _children_reachable:
        raise AttributeError("prometheus_client's children: another layout")
    return child._value


def histogram_parts(child: Any) -> tuple[list[float], list[Any], Any]:
    """A histogram child's (upper bounds, bucket values, sum value), non-cumulative buckets.

    Raises AttributeError as :func:`child_value` does.
    """
    if not _children_reachable:
        raise AttributeError("prometheus_client's children: another layout")
    return list(child._upper_bounds), child._buckets, child._sum


#: False when the start check found no ``_lock`` that ``labels()`` takes.
_label_lock_known = True


def renew_label_lock(metric: Any) -> None:
    """Give ``metric`` a new lock for its table of children (in a forked child process)."""
    if _label_lock_known and hasattr(metric, "_lock"):
        metric._lock = threading.Lock()


def _entries(data: bytes, used: int) -> list[tuple[str, int]]:
    """(key, value position) of every entry, parsed as tasker's store parses them."""
    out, pos = [], FIRST_ENTRY
    while pos < used:
        (length,) = HEADER.unpack_from(data, pos)
        end = entry_end(pos, length)
        out.append((data[pos + 4:pos + 4 + length].decode("utf-8"), end - 16))
        pos = end
    return out


# -- the start check -----------------------------------------------------------

_PROBE_LABELS = ("queue", "task")
_PROBE_VALUES = ("q", "tâche \"probe\"")


def check_key_shape() -> None:
    """``mmap_key`` writes the JSON list tasker's store reads, labels sorted."""
    key = mmap_dict.mmap_key("tasker_probe", "tasker_probe_total", list(_PROBE_LABELS),
                             list(_PROBE_VALUES), "Probe.")
    try:
        got = parse_key(key)
    except ValueError:  # UnknownKeyShape, or not JSON at all
        raise AssertionError(f"it writes keys of another shape: {key[:60]}") from None
    want = ("tasker_probe", "tasker_probe_total", dict(zip(_PROBE_LABELS, _PROBE_VALUES)),
            "Probe.")
    if got != want:
        raise AssertionError(f"mmap_key gave {got!r}, tasker reads {want!r}")


def check_file_layout(mmaped_dict: type | None = None) -> None:
    """Write probe values with tasker's value class into a temporary file; read them back.

    The file is written as a node writes it: tasker's value class on
    ``AllocatedMmapedDict`` (``_used``, ``_f``, ``_init_value``), unless
    ``mmaped_dict`` says otherwise.

    Read back three ways, which must agree: tasker's own parse of the bytes
    (what the store does), prometheus_client's ``read_all_values_from_file``
    (what the stock collector does) and ``MmapedDict``'s ``_positions``.
    """
    try:
        scratch = tempfile.TemporaryDirectory(prefix="tasker-contract-")
    except OSError as exc:  # the machine's fault, not the library's: say which
        raise AssertionError(f"no probe file could be written in {tempfile.gettempdir()} "
                             f"(TMPDIR): {exc}") from None
    with scratch as directory:
        cls = multiprocess_value_class(lambda: "probe", mmaped_dict or AllocatedMmapedDict,
                                       directory=lambda: directory)
        try:
            probes = {}
            for i, amount in enumerate((2.5, 7.0, 0.125)):
                labelvalues = (*_PROBE_VALUES[:1], _PROBE_VALUES[1] + "x" * i)
                value = cls("counter", "tasker_probe", "tasker_probe_total", _PROBE_LABELS,
                            labelvalues, "Probe.", "")
                value.inc(amount)
                key = mmap_dict.mmap_key("tasker_probe", "tasker_probe_total",
                                         list(_PROBE_LABELS), list(labelvalues), "Probe.")
                probes[key] = (amount, value._file._positions[key])
            path = os.path.join(directory, "counter_probe.db")
            read = read_used(path)
            if read is None:
                raise AssertionError("the probe file has no used size")
            data, used, _ = read
            ours = {key: (struct.unpack_from("<d", data, pos)[0], pos)
                    for key, pos in _entries(data, used)}
            if ours != probes:
                raise AssertionError(f"tasker read {ours!r} from the file, wrote {probes!r}")
            stock = {entry[0]: entry[1]
                     for entry in mmap_dict.MmapedDict.read_all_values_from_file(path)}
            if stock != {k: v for k, (v, _) in probes.items()}:
                raise AssertionError(f"prometheus_client read {stock!r}, tasker wrote {probes!r}")
        finally:
            cls.close_all_files()


@contextmanager
def _probe_values() -> Iterator[None]:
    """The probes' metrics keep their values in memory, whatever the process's mode.

    With ``PROMETHEUS_MULTIPROC_DIR`` set before start, prometheus_client's
    value class writes a file per metric type into that directory, named
    after the pid: files the node's own start then refuses as not tasker's.
    The checks run at ``worker_init``, single-threaded, before any metric of
    the node exists.
    """
    previous = values.ValueClass
    values.ValueClass = values.MutexValue
    try:
        yield
    finally:
        values.ValueClass = previous


def check_children() -> None:
    with _probe_values():
        _check_children()


def _check_children() -> None:
    """A child's values are where :func:`child_value` and :func:`histogram_parts` look.

    Proven through the public ``collect()``: what is added through them is
    what prometheus_client reports.
    """
    global _children_reachable  # the start check's outcome, read by module functions
    _children_reachable = True
    counter = Counter("tasker_probe", "Probe.", ["l"], registry=None)
    gauge = Gauge("tasker_probe_g", "Probe.", ["l"], registry=None,
                  multiprocess_mode="livesum")
    histogram = Histogram("tasker_probe_h", "Probe.", ["l"], buckets=(1.0, 2.0),
                          registry=None)
    c, g, h = counter.labels("x"), gauge.labels("x"), histogram.labels("x")
    try:
        child_value(c).inc(2.0)
        child_value(g).inc(3.0)
        bounds, buckets, total = histogram_parts(h)
        if bounds != [1.0, 2.0, float("inf")] or len(buckets) != len(bounds):
            raise AssertionError(f"histogram bounds {bounds!r}, {len(buckets)} buckets")
        buckets[1].inc(1.0)
        total.inc(1.5)
    except (AttributeError, TypeError, AssertionError):
        _children_reachable = False
        raise
    samples = {(s.name, s.labels.get("le")): s.value
               for m in (counter, gauge, histogram) for s in m.collect()[0].samples}
    want = {("tasker_probe_total", None): 2.0, ("tasker_probe_g", None): 3.0,
            ("tasker_probe_h_bucket", "1.0"): 0.0, ("tasker_probe_h_bucket", "2.0"): 1.0,
            ("tasker_probe_h_count", None): 1.0, ("tasker_probe_h_sum", None): 1.5}
    wrong = {k: samples.get(k) for k, v in want.items() if samples.get(k) != v}
    if wrong:
        _children_reachable = False
        raise AssertionError(f"collect() reported {wrong!r} after the probe updates")


def check_label_lock() -> None:
    """A labelled metric guards its children with a ``_lock`` that ``labels()`` takes."""
    with _probe_values():
        _check_label_lock()


def _check_label_lock() -> None:
    global _label_lock_known  # the start check's outcome, read at every fork
    counter = Counter("tasker_probe", "Probe.", ["l"], registry=None)
    lock = getattr(counter, "_lock", None)
    # A plain Lock, as renew_label_lock makes (an RLock replaced by one could deadlock).
    taken = isinstance(lock, type(threading.Lock()))
    if taken:
        # labels() must wait for it: held here, a labels() in another thread blocks.
        lock.acquire()
        started, done = threading.Event(), threading.Event()

        def probe() -> None:
            started.set()
            counter.labels("y")
            done.set()

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        # Waited for once the thread runs (a busy machine may start it late):
        # labels() that did not block would have returned well within this.
        started.wait(5.0)
        taken = not done.wait(0.2)
        lock.release()
        t.join(1.0)
    _label_lock_known = taken
    if not taken:
        raise AssertionError("labels() does not take the metric's _lock")


TOUCHES = (
    Touch(LIBRARY, "mmap_key's key shape", check_key_shape, fallback=None),
    Touch(LIBRARY, "MmapedDict's file layout (_positions, _m, _used, _f, _init_value)",
          check_file_layout,
          fallback=None),
    Touch(LIBRARY, "metric children's _value, _buckets, _sum, _upper_bounds", check_children,
          fallback="records through the public inc()/observe(), slower"),
    Touch(LIBRARY, "a labelled metric's _lock", check_label_lock,
          fallback="no new label lock after a fork (a fork during labels() could hang it)"),
)
