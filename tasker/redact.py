"""Keep passwords out of every line tasker prints, logs, serves or raises."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url", "redact_text"]

#: Matches the userinfo part of any URL-looking token: ``scheme://user:secret@``.
#: The password runs to the token's last ``@`` (passwords often hold a raw ``@``); an ``@``
#: later in the token only makes it redact more.
_USERINFO_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>\S*)@")
#: libpq keyword form: ``password=secret``.
_KEYWORD_PASSWORD = re.compile(r"(?i)(password\s*=\s*)('[^']*'|\S+)")


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``.

    Works on any scheme (redis, amqp, postgresql); a URL that cannot be parsed
    is redacted textually rather than returned unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None:
        return redact_text(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{user}:***@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Redact every URL password and ``password=`` keyword inside free text."""
    text = _USERINFO_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m.group(1)}***", text)
