"""Keep passwords out of every line tasker prints, logs, serves or raises.

Two layers, because no single pattern covers every way a secret reaches text:

* structural: the password of any URL-looking token (including kombu's
  failover lists ``redis://:a@h1;redis://:b@h2`` and ``sentinel://``), a
  ``?password=`` query parameter, and libpq's ``password=`` keyword form;
* literal: every secret that :mod:`tasker.settings` found in its
  configuration (URL passwords in raw, percent-decoded and percent-encoded
  form, the metrics token) is registered with :func:`register_secrets` and
  replaced wherever it shows up, e.g. in a driver's error message that quotes
  the decoded password without the URL around it.
"""

from __future__ import annotations

import json
import re
import threading
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit, urlunsplit

__all__ = ["redact_url", "redact_text", "register_secrets", "secrets_in", "MASK"]

MASK = "***"

#: Matches the userinfo part of any URL-looking token: ``scheme://user:secret@``.
#: The password runs to the token's last ``@`` (passwords often hold a raw ``@``); an ``@``
#: later in the token only makes it redact more. Failover lists are split first (see
#: ``_FAILOVER``), so the second URL of a list keeps its host.
_USERINFO_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>\S*)@")
#: kombu's failover separator: a ``;`` directly followed by the next URL's scheme.
_FAILOVER = re.compile(r";(?=[a-zA-Z][a-zA-Z0-9+.-]*://)")
#: A secret in a URL query: ``?password=…`` (kombu, redis-py, libpq all accept it).
_QUERY_PASSWORD = re.compile(
    r"(?i)(?P<key>[?&;](?:password|passwd|pass|sslpassword|oauth_client_secret)=)(?P<pw>[^&#\s]*)")
#: libpq keyword form: ``password=secret``, ``password='s3 cr\\'et'`` (also sslpassword=,
#: oauth_client_secret=, which ``password=`` does not match as a suffix).
_KEYWORD_PASSWORD = re.compile(
    r"(?i)((?:password|oauth_client_secret)\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_QUERY_KEYS = frozenset({"password", "passwd", "pass", "sslpassword", "oauth_client_secret"})
#: Secrets shorter than this are only removed structurally: replacing every
#: occurrence of "pw" in every log line would mangle the logs and hide little.
MIN_LITERAL = 4

#: Registered secret spellings, longest first (a secret containing another is replaced whole).
_secrets: tuple[str, ...] = ()
_lock = threading.Lock()


def _forms(secret: str) -> set[str]:
    """Every spelling of ``secret`` that can end up in text."""
    forms = {secret, unquote(secret), quote(secret, safe=""), quote_plus(secret, safe=""),
             quote(unquote(secret), safe="")}
    # JSON log lines escape quotes and backslashes.
    forms |= {json.dumps(f, ensure_ascii=False)[1:-1] for f in list(forms)}
    return {f for f in forms if len(f) >= MIN_LITERAL}


def register_secrets(*secrets: str | None) -> None:
    """Remember secrets that :func:`redact_text` must remove wherever they appear."""
    global _secrets  # read by logging formatters and error paths, which get no handle
    new: set[str] = set()
    for secret in secrets:
        if secret:
            new |= _forms(secret)
    with _lock:
        if new - set(_secrets):
            _secrets = tuple(sorted(set(_secrets) | new, key=len, reverse=True))


def secrets_in(value: str | None) -> set[str]:
    """The passwords inside a URL, a failover list of URLs, or a libpq conninfo."""
    found: set[str] = set()
    if not value:
        return found
    for part in _FAILOVER.split(value):
        for match in _USERINFO_PASSWORD.finditer(part):
            if match["pw"]:
                found.add(match["pw"])
        try:
            parts = urlsplit(part)
            if parts.password:
                found.add(parts.password)
            found |= {v for k, v in parse_qsl(parts.query, keep_blank_values=True)
                      if k.lower() in _QUERY_KEYS and v}
        except ValueError:
            pass
        found |= {m["pw"] for m in _QUERY_PASSWORD.finditer(part) if m["pw"]}
    for match in _KEYWORD_PASSWORD.finditer(value):
        raw = match.group(2)
        if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if raw:
            found.add(raw)
    return found


def _redact_one_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        password = parts.password
        port = parts.port
    except ValueError:
        return _structural(url)
    if password is None or "@" in (parts.hostname or "") or (
            parts.netloc.count("@") > 1):
        # No password, or one holding a raw ``@`` that urlsplit splits at the
        # wrong place: the textual pass below handles both.
        return _structural(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{port}" if port is not None else "")
    query = _QUERY_PASSWORD.sub(lambda m: f"{m['key']}{MASK}", "?" + parts.query)[1:]
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_url(url: str) -> str:
    """Return ``url`` with every password replaced by ``***``.

    Works on any scheme (redis, sentinel, amqp, postgresql), on kombu's failover
    lists (``;``-separated), on ``?password=`` queries and on libpq keyword
    conninfo; a URL that cannot be parsed is redacted textually rather than
    returned unchanged.
    """
    redacted = ";".join(_redact_one_url(part) for part in _FAILOVER.split(url))
    return _literal(redacted)


def _structural(text: str) -> str:
    text = ";".join(
        _USERINFO_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", part)
        for part in _FAILOVER.split(text))
    text = _QUERY_PASSWORD.sub(lambda m: f"{m['key']}{MASK}", text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}", text)


def _literal(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_text(text: str) -> str:
    """Redact every URL password, ``password=`` keyword and registered secret in free text."""
    return _literal(_structural(text))
