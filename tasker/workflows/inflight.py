"""Which steps have a message waiting in the broker's step queue.

The recovery poller re-dispatches a step only when its message is provably not
in flight. "Dispatched more than the deadline ago" cannot tell a lost message
from one waiting behind a backlog, so the poller also reads the queue: a step
whose message is still waiting is never given a second one.

On Redis the queue is a list per priority level (kombu LPUSHes, BRPOPs); one
server-side script reads every level and returns only each ``tasker.run_step``
message's ``argsrepr`` header, so the read is atomic (no message missed or
counted twice while workers pop) and only a few bytes per message cross the
wire. Other brokers cannot be read without consuming: :func:`waiting_steps`
returns None and the poller falls back to a growing re-dispatch interval.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tasker.contracts.kombu_redis import priority_list_keys

__all__ = ["waiting_steps", "MAX_SCAN"]

#: Longest queue the poller reads (messages, all levels); longer proves nothing
#: (None) and the poller falls back to its growing interval. About 30 ms of
#: Redis time at the limit.
MAX_SCAN = 10_000

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: KEYS: the levels of the queue; ARGV[1]: the scan limit. Returns -1 when the
#: queue is longer than the limit, else the argsrepr of every step message.
_SCRIPT = """
local total = 0
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key)['ok'] == 'list' then total = total + redis.call('LLEN', key) end
end
if total > tonumber(ARGV[1]) then return -1 end
local out = {}
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key)['ok'] == 'list' then
    for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do
      local ok, msg = pcall(cjson.decode, raw)
      if ok and type(msg) == 'table' and type(msg['headers']) == 'table'
          and msg['headers']['task'] == 'tasker.run_step' then
        out[#out + 1] = tostring(msg['headers']['argsrepr'])
      end
    end
  end
end
return out
"""


def waiting_steps(queue: str, app: Any, limit: int = MAX_SCAN) -> Counter[str] | None:
    """Step uuid -> messages waiting in ``queue``; None when that cannot be known.

    Raises:
        kombu / redis connection errors: the broker cannot be reached.
    """
    with app.connection_for_read() as conn:
        if conn.transport.driver_type != "redis":
            return None
        # lazy: only with a Redis broker (whose transport loads it anyway); 75 ms otherwise.
        import redis

        chan = conn.default_channel
        prefix: str = chan.global_keyprefix or ""
        # A plain client on kombu's pool: its prefixing client only prefixes
        # the commands kombu itself uses, so the keys are prefixed by hand.
        client = redis.Redis(connection_pool=chan.client.connection_pool)
        # The list key of each priority level: kombu's scheme (tasker.contracts).
        keys = [prefix + k for k in priority_list_keys(queue, chan.priority_steps, chan.sep)]
        reply = client.eval(_SCRIPT, len(keys), *keys, limit)
    if reply == -1:
        return None
    found: Counter[str] = Counter()
    for raw in reply:
        match = _UUID.search(raw.decode() if isinstance(raw, bytes) else str(raw))
        if match:
            found[match.group(0)] += 1
    return found
