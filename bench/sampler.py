"""Fleet sampler: one ``sample_queues`` call for 50 queues x 10 priority levels (Redis).

    python -m bench.sampler [--quick] [--queues 50] [--levels 10] [--calls N]
                            [--held 50000] [--body-bytes 2048]

Fills 50 queues on loopback Redis with messages at each of 10 priority levels
(``transport_options={"priority_steps": list(range(10))}``, 2 messages per
level, each carrying tasker's publish stamp), then times
:func:`tasker.sampler.broker.sample_queues` for all of them, call after call.
Each call opens and closes its own connection, as the beat task does, so the
time includes connecting. Round trips are counted on the client side: every
write of one or more commands to a Redis socket (``send_packed_command``),
connection set-up included.

Then, on a private Redis (``tasker.cli.embedded_services``: 100 MB of held messages stay
off the shared server), ``--held`` unacked messages of ``--body-bytes`` each
(kombu's ``unacked`` hash and ``unacked_index``, as kombu's QoS writes them,
over 5 queues, plus 1-5 ready messages per queue) are sampled: the samples
that attribute them first, then ``--calls`` steady samples. Per sample it
reports the Redis time (slow log at a 0 µs threshold, top-level commands only:
Redis also lists the commands a script runs inside the script's time) and the
bytes Redis received and sent (``INFO stats``), and checks depth and unacked
against what was written. For comparison it times what the sampler did before
(``HVALS`` of the unacked hash) on the same data.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench import common
from bench.common import progress

BENCH = "sampler"
MESSAGES_PER_LEVEL = 2
#: Commands that open a connection rather than sample.
SETUP_COMMANDS = frozenset({"HELLO", "AUTH", "SELECT", "CLIENT", "PING"})


class RoundTrips:
    """Counts writes to Redis sockets (one per command or per pipeline) while active."""

    def __init__(self) -> None:
        self.sends: list[list[str]] = []
        self._pending: list[str] | None = None
        self.active = False

    def install(self) -> None:
        from redis.connection import AbstractConnection

        counter = self
        orig_send_packed = AbstractConnection.send_packed_command
        orig_send_command = AbstractConnection.send_command
        orig_pack_commands = AbstractConnection.pack_commands

        def send_packed_command(conn: Any, command: Any, check_health: bool = True) -> Any:
            if counter.active:
                counter.sends.append(counter._pending or ["?"])
                counter._pending = None
            return orig_send_packed(conn, command, check_health)

        def send_command(conn: Any, *args: Any, **kwargs: Any) -> Any:
            if counter.active:
                words = [str(a).upper() for a in args[:2]]
                # CLIENT, CONFIG...: the subcommand says what it is.
                name = " ".join(words) if words and words[0] == "CLIENT" else words[0]
                counter._pending = [name] if args else ["?"]
            return orig_send_command(conn, *args, **kwargs)

        def pack_commands(conn: Any, commands: Any) -> Any:
            commands = list(commands)
            if counter.active:
                counter._pending = [str(c[0]).upper() for c in commands]
            return orig_pack_commands(conn, commands)

        AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
        AbstractConnection.send_command = send_command  # type: ignore[method-assign]
        AbstractConnection.pack_commands = pack_commands  # type: ignore[method-assign]

    def describe(self) -> list[str]:
        out = []
        for cmds in self.sends:
            counts = Counter(cmds)
            out.append(" + ".join(f"{n} {c}" if n > 1 else c for c, n in counts.items()))
        return out


def fill(conn: Any, queues: list[str], levels: int) -> int:
    published = 0
    for queue in queues:
        simple = conn.SimpleQueue(queue)
        try:
            for level in range(levels):
                for i in range(MESSAGES_PER_LEVEL):
                    simple.put({"n": i}, priority=level,
                               headers={"tasker_published_at": time.time() - 5.0})
                    published += 1
        finally:
            simple.close()
    return published


#: Queues the held messages are spread over.
HELD_QUEUES = 5
#: Commands tasker's sampling scripts run inside Redis (listed again by the slow log).
_IN_SCRIPTS = frozenset({"TYPE", "LLEN", "LINDEX", "GET", "SET", "ZRANGEBYSCORE", "ZSCORE",
                         "HGET", "ZADD", "SADD", "ZCARD", "ZINTERCARD", "ZINTERSTORE",
                         "ZREMRANGEBYSCORE", "ZRANGE", "SMEMBERS", "DEL", "SREM"})
_MEASURING = frozenset({"SLOWLOG", "CONFIG", "INFO"})


def _hold(client: Any, queues: list[str], n: int, body_bytes: int) -> dict[str, int]:
    """``n`` unacked messages as kombu's Redis QoS keeps them: json([message, exchange, rk])."""
    held = dict.fromkeys(queues, 0)
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            queue, tag = queues[i % len(queues)], str(uuid.uuid4())
            message = {"body": "x" * body_bytes, "content-type": "application/json",
                       "content-encoding": "utf-8",
                       "headers": {"task": "diagnostics.noop", "id": tag},
                       "properties": {"delivery_tag": tag, "priority": 0,
                                      "delivery_info": {"exchange": "", "routing_key": queue}}}
            pipe.hset("unacked", tag, json.dumps([message, "", queue]))
            pipe.zadd("unacked_index", {tag: now - n + i})
            held[queue] += 1
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()
    return held


def _redis_cost(client: Any, fn: Any) -> tuple[Any, float, int]:
    """(result, Redis ms of the top-level commands, bytes in + out) of ``fn()``."""
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 4096)
    client.slowlog_reset()
    before = client.info("stats")
    result = fn()
    after = client.info("stats")
    usec = 0
    for entry in client.slowlog_get(4096):
        words = entry["command"].split()
        name = (words[0].decode() if isinstance(words[0], bytes) else words[0]).upper() \
            if words else ""
        if name not in _IN_SCRIPTS | _MEASURING:
            usec += entry["duration"]
    moved = sum(after[k] - before[k] for k in ("total_net_input_bytes", "total_net_output_bytes"))
    return result, usec / 1000, moved


def held_messages(held: int, body_bytes: int, calls: int) -> dict[str, Any]:
    """Sample ``held`` unacked messages on a private Redis; costs per sample."""
    import kombu
    import redis

    from tasker.cli.embedded_services import EmbeddedRedis
    from tasker.sampler import broker

    with tempfile.TemporaryDirectory(prefix="tasker-bench-redis-") as tmp:
        server = EmbeddedRedis(Path(tmp))
        server.start()
        try:
            client = redis.Redis.from_url(server.url)
            queues = [f"held-{i}" for i in range(HELD_QUEUES)]
            expected_unacked = _hold(client, queues, held, body_bytes)
            expected_depth = {q: i + 1 for i, q in enumerate(queues)}
            for queue, depth in expected_depth.items():
                client.lpush(queue, *[b'{"headers": {}}'] * depth)
            memory = client.info("memory")["used_memory"]
            progress(BENCH, f"{held} held messages of {body_bytes} B on a private Redis "
                            f"({memory / 2**20:.0f} MiB)")

            def sample() -> dict[str, Any]:
                with kombu.Connection(server.url) as conn:
                    return broker.sample_queues(conn, queues)

            catch_up: list[tuple[float, int]] = []
            while True:
                result, ms, moved = _redis_cost(client, sample)
                catch_up.append((ms, moved))
                if result[queues[0]].unacked is not None or len(catch_up) > held:
                    break
            steady_ms, steady_bytes, correct = [], [], True
            for _ in range(calls):
                result, ms, moved = _redis_cost(client, sample)
                steady_ms.append(ms)
                steady_bytes.append(moved)
                correct &= ({q: s.unacked for q, s in result.items()} == expected_unacked
                            and {q: s.depth for q, s in result.items()} == expected_depth)
            hvals_ms, hvals_bytes = [], []
            for _ in range(3):  # what one sample cost before: HVALS of every body
                _, ms, moved = _redis_cost(client, lambda: client.hvals("unacked"))
                hvals_ms.append(ms)
                hvals_bytes.append(moved)
            client.close()
        finally:
            server.stop()
    return {
        "held": held, "body_bytes": body_bytes, "queues": HELD_QUEUES, "calls": calls,
        "redis_used_memory_bytes": memory,
        "catch_up_samples": len(catch_up),
        "catch_up_redis_ms": common.spread(ms for ms, _ in catch_up),
        "catch_up_bytes": common.spread(b for _, b in catch_up),
        "redis_ms": common.spread(steady_ms), "bytes": common.spread(steady_bytes),
        "hvals_redis_ms": common.spread(hvals_ms), "hvals_bytes": common.spread(hvals_bytes),
        "result_correct": correct,
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.sampler", __doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=50)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--calls", type=int, help="timed calls (default 50; quick 10)")
    parser.add_argument("--held", type=int, help="unacked messages held on a private Redis "
                        "(default 50000; quick 5000; 0 = skip)")
    parser.add_argument("--body-bytes", type=int, default=2048,
                        help="body size of each held message (default 2048)")
    args = parser.parse_args(argv)
    held = args.held if args.held is not None else (5000 if args.quick else 50_000)
    calls = args.calls or (10 if args.quick else 50)
    results = common.Results(BENCH, args, {
        "queues": args.queues, "levels": args.levels, "messages_per_level": MESSAGES_PER_LEVEL,
        "calls": calls, "broker": common.REDIS_URL})

    import kombu

    from tasker.sampler.broker import sample_queues

    client = common.redis_client()
    queues = [f"{common.SESSION}-{BENCH}-{i:02d}" for i in range(args.queues)]
    conn = kombu.Connection(common.REDIS_URL,
                            transport_options={"priority_steps": list(range(args.levels))})
    ok = False
    try:
        published = fill(conn, queues, args.levels)
        expected = args.levels * MESSAGES_PER_LEVEL
        level_keys = sum(1 for q in queues for _ in client.scan_iter(match=f"{q}*"))
        progress(BENCH, f"{published} messages in {level_keys} lists of {len(queues)} queues")

        trips = RoundTrips()
        trips.install()
        for _ in range(2):  # warm-up (imports, first connection)
            sample_queues(conn, queues)
        times, trip_counts = [], []
        sample: dict[str, Any] = {}
        for _ in range(calls):
            trips.sends.clear()
            trips.active = True
            started = time.perf_counter()
            sample = sample_queues(conn, queues)
            elapsed = time.perf_counter() - started
            trips.active = False
            times.append(elapsed)
            trip_counts.append(len(trips.sends))
        correct = (len(sample) == len(queues)
                   and all(s.depth == expected for s in sample.values())
                   and all(s.oldest_message_age_seconds is not None for s in sample.values()))
        described = trips.describe()
        setup = sum(1 for cmds in trips.sends
                    if {c.split()[0] for c in cmds} <= SETUP_COMMANDS)
        record = {
            "queues": len(queues), "levels": args.levels, "lists": level_keys,
            "messages": published, "calls": calls,
            "ms": common.spread(t * 1e3 for t in times),
            "round_trips": common.spread(trip_counts),
            "round_trips_last_call": described,
            "round_trips_setup": setup,
            "round_trips_sampling": len(trips.sends) - setup,
            "commands_last_call": sum(len(c) for c in trips.sends),
            "result_correct": correct,
        }
        results.write("run", record)
        results.write("summary", record)
        if held:
            record_held = held_messages(held, args.body_bytes, min(calls, 20))
            results.write("held", record_held)
            progress(BENCH, f"{held} held unacked messages: Redis "
                            f"{record_held['redis_ms']['median']:.2f} ms and "
                            f"{record_held['bytes']['median']:,.0f} B per sample "
                            f"(HVALS: {record_held['hvals_redis_ms']['median']:.1f} ms, "
                            f"{record_held['hvals_bytes']['median']:,.0f} B); "
                            f"{record_held['catch_up_samples']} samples to attribute them; "
                            f"correct: {record_held['result_correct']}")
        progress(BENCH, f"sample_queues({len(queues)} queues x {args.levels} levels): "
                        f"{record['ms']['median']:.2f} ms ({record['ms']['min']:.2f}-"
                        f"{record['ms']['max']:.2f}), {trip_counts[-1]} round trips "
                        f"({setup} connection set-up): {'; '.join(described)}; "
                        f"correct: {correct}")
        ok = True
    finally:
        for queue in queues:
            common.delete_queue_keys(client, queue)
        common.cleanup_session_keys(client)
        client.close()
        conn.release()
        results.close(ok)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
