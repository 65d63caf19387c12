"""The API token: made on first start, kept with mode 0600 in the state dir, required by every mutation.

Reading needs no token (the server listens on loopback only); every request that changes something
(an action on a unit, a journal verification run) must carry ``Authorization: Bearer <token>``:
no token gives 401, a wrong one 403. Tokens are compared in constant time. The browser UI keeps the
token in the tab's local storage and sends it as that header (never as a cookie, so no other site can
make the browser send it).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from enmei.errors import EnmeiError

__all__ = ["WebError", "load_or_create_token", "token_matches"]

_MIN_LEN = 16


class WebError(EnmeiError):
    """The web server cannot start: a listen address it refuses, a port in use, a bad token file."""


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token in ``path`` and whether it was just made.

    A missing file is made (its directory too) with a new random token, written to a temp file of mode
    0600 and renamed into place. Raises ``WebError`` if the file is readable or writable by group or
    others (the token may have leaked: delete the file and a new one is made), is not owned by this
    user, holds no usable token, or cannot be read or written.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return _create(path), True
    except OSError as exc:
        raise WebError(f"cannot read the web token {path}: {exc}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WebError(f"the web token {path} has mode {stat.S_IMODE(st.st_mode):04o}, readable by others: "
                       "delete it and enmei makes a new one with mode 0600")
    if st.st_uid != os.getuid():
        raise WebError(f"the web token {path} belongs to uid {st.st_uid}, not to this user ({os.getuid()})")
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise WebError(f"cannot read the web token {path}: {exc}") from exc
    if len(token) < _MIN_LEN or not token.isprintable() or " " in token:
        raise WebError(f"the web token {path} holds no usable token: delete it and enmei makes a new one")
    return token, False


def _create(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (token + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WebError(f"cannot write the web token {path}: {exc}") from exc
    return token


def token_matches(expected: str, given: str) -> bool:
    """Whether ``given`` is the token, in time independent of where they differ."""
    return hmac.compare_digest(expected.encode(), given.encode())
