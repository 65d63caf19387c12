"""The token file and the listen address: what is made, what is refused, and how it is said."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from enmei.web import WebError, load_or_create_token, parse_listen
from enmei.web.app import loopback_host
from enmei.web.auth import token_matches


def test_token_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "web.token"
    token, created = load_or_create_token(path)
    assert created and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created = load_or_create_token(path)
    assert again == token and not created
    assert [p.name for p in path.parent.iterdir()] == ["web.token"]  # no temp file left


def test_a_token_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "web.token"
    load_or_create_token(path)
    os.chmod(path, 0o644)
    with pytest.raises(WebError, match=r"mode 0644, readable by others: delete it"):
        load_or_create_token(path)


@pytest.mark.parametrize("content", ["", "short", "has a space in it right here\n"])
def test_a_token_file_without_a_usable_token_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "web.token"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(WebError, match="holds no usable token"):
        load_or_create_token(path)


def test_a_state_dir_that_is_a_file_is_a_web_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(WebError, match=r"cannot read the web token .*Not a directory"):
        load_or_create_token(tmp_path / "file" / "web.token")


def test_token_matches() -> None:
    assert token_matches("abc", "abc") and not token_matches("abc", "abd") and not token_matches("abc", "")


@pytest.mark.parametrize(("listen", "want"), [
    ("127.0.0.1:8470", ("127.0.0.1", 8470)), ("localhost:1", ("127.0.0.1", 1)), (":8470", ("127.0.0.1", 8470)),
    ("[::1]:8470", ("::1", 8470)), ("127.1.2.3:0", ("127.1.2.3", 0)),
])
def test_loopback_addresses(listen: str, want: tuple[str, int]) -> None:
    assert parse_listen(listen) == want


@pytest.mark.parametrize(("listen", "says"), [
    ("0.0.0.0:8470", "0.0.0.0 is not a loopback address"),
    ("192.168.1.5:8470", "192.168.1.5 is not a loopback address"),
    ("[::]:8470", ":: is not a loopback address"),
    ("example.com:8470", "'example.com' is not an IP address"),
    ("8470", "give HOST:PORT"),
    ("127.0.0.1:http", "give HOST:PORT"),
    ("127.0.0.1:70000", "give HOST:PORT"),
])
def test_anything_else_is_refused_clearly(listen: str, says: str) -> None:
    with pytest.raises(WebError, match="--listen") as err:
        parse_listen(listen)
    assert says in str(err.value)


def test_loopback_host_header() -> None:
    assert loopback_host("127.0.0.1:8470") and loopback_host("LOCALHOST") and loopback_host("[::1]")
    assert not loopback_host("") and not loopback_host("10.0.0.1:80") and not loopback_host("[::1")
    assert not loopback_host("127.0.0.1.nip.io")
