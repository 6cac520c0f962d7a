"""Fleet sampler: one ``sample_queues`` call for 50 queues x 10 priority levels (Redis).

    python -m bench.sampler [--quick] [--queues 50] [--levels 10] [--calls N]

Fills 50 queues on loopback Redis with messages at each of 10 priority levels
(``transport_options={"priority_steps": list(range(10))}``, 2 messages per
level, each carrying tasker's publish stamp), then times
:func:`tasker.sampler.broker.sample_queues` for all of them, call after call.
Each call opens and closes its own connection, as the beat task does, so the
time includes connecting. Round trips are counted on the client side: every
write of one or more commands to a Redis socket (``send_packed_command``),
connection set-up included.
"""

from __future__ import annotations

import time
from collections import Counter
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


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.sampler", __doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=50)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--calls", type=int, help="timed calls (default 50; quick 10)")
    args = parser.parse_args(argv)
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
