"""Where an index is: an SQLite file, or a PostgreSQL server's URL, shown everywhere with its password as ***.

Read without importing a database driver, so `--db` and AUDIOFIND_DB accept a URL even where the postgres extra is
not installed (opening it then says how to install it).
"""

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from audiofind.errors import UsageError
from audiofind.paths import default_db

SCHEMES = ("postgresql://", "postgres://")
HIDDEN = "***"
# A password given as a query parameter (?password=...) or in a key=value string (password=...).
_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword=)([^&\s]*)")
_ANY_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


def is_url(db: Path | str | None) -> bool:
    """Whether db names a PostgreSQL server rather than an SQLite file."""
    return isinstance(db, str) and db.strip().lower().startswith(SCHEMES)


def resolve(db: Path | str | None) -> Path | str:
    """The index db names: itself, else AUDIOFIND_DB (a URL kept as text), else the default file; UsageError for a
    URL of another scheme (mysql://...), which would otherwise become a file of that odd name."""
    value = db or os.environ.get("AUDIOFIND_DB", "")
    if isinstance(value, str) and _ANY_URL.match(value.strip()) and not is_url(value):
        scheme = value.strip().split("://", 1)[0]
        raise UsageError(f"The index is an SQLite file or a postgresql:// URL; {scheme}:// is not supported.")
    if db:
        return db.strip() if isinstance(db, str) and is_url(db) else db
    return value.strip() if isinstance(value, str) and is_url(value) else default_db()


def redact(url: str) -> str:
    """url with any password replaced by ***: the only form of a URL audiofind ever shows or logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _PASSWORD_PARAM.sub(rf"\g<1>{HIDDEN}", url.split("@")[-1])
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        if ":" in user:
            user = user.split(":", 1)[0] + ":" + HIDDEN
        netloc = f"{user}@{host}"
    query = _PASSWORD_PARAM.sub(rf"\g<1>{HIDDEN}", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def password(url: str) -> str | None:
    """The password written in url, if any (so a message can be scrubbed of it)."""
    try:
        parts = urlsplit(url)
        found = parts.password
    except ValueError:
        found = None
    if found:
        return found
    m = _PASSWORD_PARAM.search(url)
    return m.group(2) if m and m.group(2) else None


def scrub(text: str, url: str) -> str:
    """text with url's password (and the URL itself) replaced by their shown forms."""
    text = text.replace(url, redact(url))
    secret = password(url)
    for form in (secret, unquote(secret)) if secret else ():
        text = text.replace(form, HIDDEN)
    return text
