"""Read, merge and compact a node's multiprocess metric files.

prometheus_client's stock ``MultiProcessCollector`` re-reads and re-parses every
file at every scrape and never forgets a dead process, so a node that recycles
its pool processes gets slower to scrape without bound. This store keeps what
does not change between scrapes:

* a file's entries are append-only, so each key is parsed once, and the values
  of a whole file are read with one precompiled ``struct`` call;
* a file whose process has exited (checked against ``/proc``, see
  :mod:`tasker.metrics.identity`) is folded into an in-memory archive (counters
  and histograms) or dropped (live gauges) and then deleted, so the directory
  holds files of live processes only.

The file format is prometheus_client's ``MmapedDict``: a 4-byte ``used`` size,
4 bytes of padding, then entries of (4-byte key length, UTF-8 JSON key padded
to 8 bytes, double value, double timestamp). It is private to
prometheus_client, so what this store knows of it is in tasker's contract
(:mod:`tasker.contracts.mmap_format`), checked on the installed version when
a node starts. A complete key of another shape stops every read with one
line naming it (a scrape fails, loudly) rather than leaving it out: an
empty scrape, silently.

Reading files that other processes are writing, without a lock:

* a value is written by one 16-byte slice assignment at an 8-byte aligned
  offset (:mod:`tasker.metrics.values`), so each double is replaced by one
  store; never ``struct.pack_into``, which zero-fills first;
* a writer appends an entry and *then* raises ``used``. x86-64 keeps those two
  stores in order for every reader; ARM64 (and other weakly ordered CPUs) may
  let a reader see the new ``used`` before the entry's bytes. So an entry that
  is not complete yet (a zero length, a key that is not valid JSON: the file
  is zero-filled, and NUL is never valid JSON) ends the parse *without*
  dropping the file: the entries before it are read, and the rest is picked
  up at the next read. Only an entry still incomplete after
  :data:`INCOMPLETE_GRACE` seconds is reported as corrupt;
* a file is read until two consecutive copies agree (up to a few times):
  bytes that did not change while they were copied hold no half-copied value,
  whatever the kernel's copy or another CPU's memory order;
* a counter or histogram value in a live process's file only ever grows, so
  when no two copies agreed (a writer at work all along) the store never
  reports one lower than it reported before (its *floor*), and a file that
  cannot be read any more keeps its last values: never a counter reset for
  Prometheus.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from tasker.contracts.mmap_format import (
    FIRST_ENTRY,
    HEADER,
    UnknownKeyShape,
    entry_end,
    parse_key,
)
from tasker.contracts.mmap_format import read_used as _read_used
from tasker.metrics import identity
from tasker.metrics.native import NativeCounts, reduce_schema
from tasker.metrics.native_series import BUCKET_LABEL, NATIVE_TYPE, parse_bucket

__all__ = ["MetricStore", "StoreReading", "Series"]

logger = logging.getLogger("tasker.metrics")

#: prometheus_client's file types, and tasker's native histogram buckets (native_series.py).
_FILE_TYPES = frozenset({"counter", "histogram", "gauge", NATIVE_TYPE})
#: Seconds an entry may stay incomplete (its writer is between the two stores
#: of an append) before the file is reported as corrupt.
INCOMPLETE_GRACE = 2.0


@dataclass(frozen=True)
class Series:
    """One sample series as written by prometheus_client."""

    metric: str  # family name, e.g. ``tasker_task_runtime_seconds``
    sample: str  # sample name, e.g. ``tasker_task_runtime_seconds_bucket``
    labels: tuple[tuple[str, str], ...]  # sorted, ``le`` included for buckets
    help: str
    typ: str
    mode: str  # gauge multiprocess mode, "" otherwise


@dataclass
class _FileState:
    """What is known about one ``.db`` file between scrapes."""

    typ: str
    mode: str
    owner: str
    parsed_upto: int = FIRST_ENTRY
    sids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    unpack: struct.Struct | None = None
    #: Counters and histograms: the values last reported, never reported lower.
    floor: tuple[float, ...] = ()
    #: (offset, first seen) of an entry not yet complete, see the module doc.
    incomplete: tuple[int, float] | None = None


@dataclass
class StoreReading:
    """Merged values of every process of the node at one moment.

    Attributes:
        series: every series known, indexed by series id.
        totals: counters and histogram samples summed over live and dead
            processes; gauges aggregated by their multiprocess mode (live only).
        per_process: gauge values of each live process, by series id.
    """

    series: list[Series]
    totals: dict[int, float]
    per_process: dict[int, dict[str, float]]
    #: Native bucket series: sid -> (histogram key, schema, index or None for zero).
    native_buckets: dict[int, tuple[tuple[str, tuple[tuple[str, str], ...]], int, int | None]] \
        = field(default_factory=dict)

    def sum_of(self, sample: str, **match: str) -> float:
        """Sum of one sample name over every label set matching ``match``."""
        total = 0.0
        for sid, value in self.totals.items():
            s = self.series[sid]
            if s.sample == sample and all(dict(s.labels).get(k) == v for k, v in match.items()):
                total += value
        return total

    def by_label(self, sample: str, label: str) -> dict[str, float]:
        """Sum of one sample name grouped by the value of ``label``."""
        grouped: dict[str, float] = defaultdict(float)
        for sid, value in self.totals.items():
            s = self.series[sid]
            if s.sample == sample:
                grouped[dict(s.labels).get(label, "")] += value
        return dict(grouped)

    def processes_where(self, sample: str, predicate: Callable[[float], bool]) -> int:
        """Number of live processes whose gauge ``sample`` satisfies ``predicate``."""
        owners: set[str] = set()
        for sid, values in self.per_process.items():
            if self.series[sid].sample == sample:
                owners.update(owner for owner, v in values.items() if predicate(v))
        return len(owners)

    def families(self) -> list[Metric]:
        """Metric families for prometheus_client's exposition (classic histograms only)."""
        return _build_families(self)

    def native_histograms(self) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                        NativeCounts]:
        """Native histograms by (family name, labels), every process's buckets merged.

        Buckets written at different schemas (a node restarted with another
        ``TASKER_NATIVE_HISTOGRAM_SCHEMA`` keeps no files, but a directory may
        be read by another tool) are merged at the coarsest of them, exactly.
        """
        parts: dict[tuple[str, tuple[tuple[str, str], ...]],
                    dict[int, NativeCounts]] = defaultdict(dict)
        totals = self.totals
        for sid, (key, schema, index) in self.native_buckets.items():
            value = totals.get(sid)
            if value is None:
                continue
            counts = parts[key].get(schema)
            if counts is None:
                counts = parts[key][schema] = NativeCounts(schema)
            if index is None:
                counts.zero_count += value
            else:
                counts.buckets[index] = counts.buckets.get(index, 0.0) + value
        merged = {}
        for key, by_schema in parts.items():
            schema = min(by_schema)
            out = NativeCounts(schema)
            for counts in by_schema.values():
                out.zero_count += counts.zero_count
                for index, count in reduce_schema(counts.buckets, counts.schema,
                                                  schema).items():
                    out.buckets[index] = out.buckets.get(index, 0.0) + count
            merged[key] = out
        return merged


class MetricStore:
    """The merged view of one node's multiprocess directory.

    Args:
        directory: the node's ``PROMETHEUS_MULTIPROC_DIR``.
        is_alive: whether the process with a given identifier still runs.
    """

    def __init__(self, directory: str,
                 is_alive: Callable[[str], bool] = identity.is_alive) -> None:
        self.directory = directory
        self._is_alive = is_alive
        self._lock = threading.Lock()
        self._series: list[Series] = []
        self._sid_by_key: dict[tuple[str, str], int] = {}
        self._files: dict[str, _FileState] = {}
        self._archive: dict[int, float] = defaultdict(float)
        #: Native bucket series, parsed once (see StoreReading.native_buckets).
        self._native_buckets: dict[int, tuple[Any, int, int | None]] = {}
        self._warned: set[str] = set()
        # Files folded into the archive that could not be deleted (an unwritable
        # directory): skipped from then on, so never folded (counted) twice.
        self._folded: set[str] = set()

    # -- public -----------------------------------------------------------

    def read(self) -> StoreReading:
        """Merge every file into one reading, compacting dead processes first."""
        with self._lock:
            live, dead = self._scan()
            for names in dead.values():
                self._fold(names)
            totals: dict[int, float] = dict(self._archive)
            per_process: dict[int, dict[str, float]] = defaultdict(dict)
            for name in live:
                state = self._files[name]
                values = self._values(name, state)
                if values is None:
                    continue
                if state.typ == "gauge":
                    for sid, value in zip(state.sids, values):
                        per_process[sid][state.owner] = value
                else:
                    for sid, value in zip(state.sids, values):
                        totals[sid] = totals.get(sid, 0.0) + value
            for sid, by_owner in per_process.items():
                totals[sid] = _aggregate_gauge(self._series[sid].mode, by_owner.values())
            return StoreReading(list(self._series), totals, dict(per_process),
                                dict(self._native_buckets))

    def compact(self) -> int:
        """Fold the files of exited processes; returns how many processes were folded."""
        with self._lock:
            _live, dead = self._scan()
            for names in dead.values():
                self._fold(names)
            return len(dead)

    # -- internals --------------------------------------------------------

    def _scan(self) -> tuple[list[str], dict[str, list[str]]]:
        """Split the directory's ``.db`` files into live ones and dead ones by owner."""
        alive_cache: dict[str, bool] = {}
        live: list[str] = []
        dead: dict[str, list[str]] = defaultdict(list)
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            self._warn_once(self.directory, "metrics.dir_unreadable", exc)
            return live, dead
        seen: set[str] = set()
        for entry in entries:
            name = entry.name
            if not name.endswith(".db") or name in self._folded:
                continue
            parsed = _parse_filename(name)
            if parsed is None:
                self._warn_once(name, "metrics.file_ignored", "not a prometheus_client file name")
                continue
            seen.add(name)
            typ, mode, owner = parsed
            if owner not in alive_cache:
                alive_cache[owner] = self._is_alive(owner)
            if alive_cache[owner]:
                if name not in self._files:
                    self._files[name] = _FileState(typ, mode, owner)
                live.append(name)
            else:
                dead[owner].append(name)
        for gone in set(self._files) - seen:  # deleted by someone else
            del self._files[gone]
        if self._folded:
            self._folded.intersection_update(entry.name for entry in entries)
        return live, dict(dead)

    def _fold(self, names: list[str]) -> None:
        """Move a dead process's counters into the archive and delete its files."""
        for name in names:
            state = self._files.pop(name, None)
            parsed = _parse_filename(name)
            if state is None and parsed is not None:
                state = _FileState(*parsed)
            if state is not None and state.typ != "gauge":
                values = self._values(name, state)
                for sid, value in zip(state.sids, values or ()):
                    self._archive[sid] += value
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._folded.add(name)
                self._warn_once(name, "metrics.file_delete_failed", exc)

    def _values(self, name: str, state: _FileState) -> tuple[float, ...] | None:
        """Every value of a file, in the order of ``state.sids``; None if unreadable."""
        path = os.path.join(self.directory, name)
        try:
            read = _read_used(path)
            if read is None:
                return None
            data, used, settled = read
            if len(data) < used:
                raise ValueError(f"file is shorter ({len(data)}) than its used size ({used})")
            if used > state.parsed_upto:
                self._parse_new_entries(state, data, used)
            if state.unpack is None:
                return ()
            values = state.unpack.unpack_from(data)[0::2]
            if state.typ == "gauge":
                return values
            if not settled:  # a writer was at work: never below the last reading
                floor = state.floor + values[len(state.floor):]  # new entries: their own
                values = tuple(map(max, values, floor))
            state.floor = values
            return values
        except FileNotFoundError:
            return None
        except UnknownKeyShape:
            raise  # not this file's fault: no file can be read right (see the module doc)
        except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
            self._warn_once(name, "metrics.file_corrupt", exc)
            # What was read of it before stays: a counter never goes back.
            return state.floor if state.typ != "gauge" and state.floor else None

    def _parse_new_entries(self, state: _FileState, data: bytes, used: int) -> None:
        pos = state.parsed_upto
        sids, positions = list(state.sids), list(state.positions)
        while pos < used:
            (length,) = HEADER.unpack_from(data, pos)
            end = entry_end(pos, length)
            key = self._complete_key(data, pos, length, end, used, state.mode)
            if key is None:  # not written yet as far as this reader can see
                self._note_incomplete(state, pos)
                break
            sids.append(self._sid(key, state))
            positions.append(end - 16)
            pos = end
        else:
            state.incomplete = None
        if pos == state.parsed_upto:
            return
        fmt, prev = ["<"], 0
        for p in positions:
            fmt.append(f"{p - prev}xdd" if p > prev else "dd")
            prev = p + 16
        state.unpack = struct.Struct("".join(fmt))
        state.sids, state.positions, state.parsed_upto = sids, positions, pos

    def _complete_key(self, data: bytes, pos: int, length: int, end: int, used: int,
                      mode: str) -> str | None:
        """The JSON key of the entry at ``pos``, or None while it is not complete.

        Raises:
            UnknownKeyShape: complete JSON, but not the key shape tasker reads.
        """
        if length <= 0 or end > used:
            return None
        try:
            key = data[pos + 4:pos + 4 + length].decode("utf-8")
            if (key, mode) in self._sid_by_key:  # a key seen complete (cheaper than JSON)
                return key
            parse_key(key)
        except UnknownKeyShape:
            raise
        except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
            return None
        return key

    def _note_incomplete(self, state: _FileState, pos: int) -> None:
        """An entry not visible yet; reported once it stays so (the entries before it count)."""
        now = time.monotonic()
        if state.incomplete is None or state.incomplete[0] != pos:
            state.incomplete = (pos, now)
        elif now - state.incomplete[1] > INCOMPLETE_GRACE:
            self._warn_once(f"{state.owner}:{state.typ}:{pos}", "metrics.file_corrupt",
                            f"entry at {pos} is still incomplete after {INCOMPLETE_GRACE} s")

    def _sid(self, key: str, state: _FileState) -> int:
        """The series id of a file key, parsing its JSON only the first time."""
        cache_key = (key, state.mode)
        found = self._sid_by_key.get(cache_key)
        if found is not None:
            return found
        metric, sample, labels, help_text = parse_key(key)
        series = Series(metric, sample, tuple(sorted((k, str(v)) for k, v in labels.items())),
                        help_text, state.typ, state.mode)
        self._series.append(series)
        sid = len(self._series) - 1
        self._sid_by_key[cache_key] = sid
        if state.typ == NATIVE_TYPE:
            bucket_labels = dict(series.labels)
            parsed = parse_bucket(bucket_labels.pop(BUCKET_LABEL, ""))
            if parsed is not None:
                key = (series.metric, tuple(sorted(bucket_labels.items())))
                self._native_buckets[sid] = (key, *parsed)
        return sid

    def _warn_once(self, what: str, event: str, reason: object) -> None:
        if what not in self._warned:
            self._warned.add(what)
            logger.warning(event, extra={"path": what, "reason": str(reason)})


def _parse_filename(name: str) -> tuple[str, str, str] | None:
    """``counter_<owner>.db`` / ``gauge_<mode>_<owner>.db`` -> (type, mode, owner)."""
    parts = name[:-3].split("_")
    if parts[0] not in _FILE_TYPES:
        return None
    if parts[0] == "gauge":
        return ("gauge", parts[1], parts[2]) if len(parts) == 3 else None
    return (parts[0], "", parts[1]) if len(parts) == 2 else None


def _aggregate_gauge(mode: str, values: Iterable[float]) -> float:
    values = list(values)
    if mode in ("livemax", "max"):
        return max(values)
    if mode in ("livemin", "min"):
        return min(values)
    return sum(values)  # livesum; liveall is exported per process


def _build_families(reading: StoreReading) -> list[Metric]:
    families: dict[str, Metric] = {}
    buckets: dict[tuple[str, tuple[tuple[str, str], ...]], dict[float, float]] = defaultdict(dict)
    for sid, value in reading.totals.items():
        s = reading.series[sid]
        if s.typ == NATIVE_TYPE:
            continue  # served in the protobuf exposition only (see native_histograms)
        family = families.get(s.metric)
        if family is None:
            family = families[s.metric] = Metric(s.metric, s.help, s.typ)
        if s.typ == "histogram" and s.sample.endswith("_bucket"):
            labels = tuple(kv for kv in s.labels if kv[0] != "le")
            le = float(dict(s.labels)["le"])
            bucket = buckets[(s.metric, labels)]
            bucket[le] = bucket.get(le, 0.0) + value
        elif s.mode == "liveall":
            for owner, v in reading.per_process.get(sid, {}).items():
                family.add_sample(s.sample, {**dict(s.labels), "pid": owner}, v)
        else:
            family.add_sample(s.sample, dict(s.labels), value)
    for (metric, labels), by_le in buckets.items():
        family, cumulative = families[metric], 0.0
        for le in sorted(by_le):
            cumulative += by_le[le]
            family.add_sample(f"{metric}_bucket", {**dict(labels), "le": floatToGoString(le)},
                              cumulative)
        family.add_sample(f"{metric}_count", dict(labels), cumulative)
    return list(families.values())
