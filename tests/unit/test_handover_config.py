"""Issue 14 item 2: ``[[units.NAME.sockets]]`` and ``restart_mode`` are validated with errors that name the
key (and its line), and what validates is passed on as declared (names, order, backlog)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.config.load import load_text
from enmei.config.model import ProcessUnit
from enmei.errors import ConfigError
from enmei.remedy.handover import parse_command
from enmei.visor.sockets import launcher_script, listen_env, split_address

HEAD = '[units.web]\ncommand = ["sleep", "1"]\n'


def _load(text: str) -> ProcessUnit:
    spec = load_text(text, Path("/tmp/enmei.toml")).config.units["web"]
    assert isinstance(spec, ProcessUnit)
    return spec


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as ei:
        _load(text)
    return str(ei.value)


def test_sockets_are_kept_in_order_with_names_and_backlog() -> None:
    spec = _load(HEAD + 'restart_mode = "handover"\n[[units.web.sockets]]\naddress = "127.0.0.1:8080"\nname = "http"\n'
                 '[[units.web.sockets]]\naddress = "[::1]:8081"\nbacklog = 16\n')
    assert [s.address for s in spec.sockets] == ["127.0.0.1:8080", "[::1]:8081"]
    assert spec.socket_names() == ["http", "sock1"]
    assert spec.sockets[0].backlog == 1024 and spec.sockets[1].backlog == 16
    assert spec.restart_mode == "handover"
    assert _load(HEAD).restart_mode == "plain" and _load(HEAD).sockets == []


@pytest.mark.parametrize(("entry", "key", "says"), [
    ('address = "127.0.0.1"', "units.web.sockets[0].address", "is not HOST:PORT"),
    ('address = "127.0.0.1:0"', "units.web.sockets[0].address", "is not HOST:PORT"),
    ('address = "127.0.0.1:65536"', "units.web.sockets[0].address", "is not HOST:PORT"),
    ('address = "localhost:80"', "units.web.sockets[0].address", "must be an IP address"),
    ('address = "127.0.0.1:80"\nname = "a:b"', "units.web.sockets[0].name", "no ':'"),
    ('address = "127.0.0.1:80"\nbacklog = 0', "units.web.sockets[0].backlog", "greater than or equal to 1"),
    ('address = "127.0.0.1:80"\nport = 1', "units.web.sockets[0].port", "unknown key 'port'"),
])
def test_a_bad_socket_entry_names_its_key_and_line(entry: str, key: str, says: str) -> None:
    msg = _error(HEAD + "[[units.web.sockets]]\n" + entry + "\n")
    assert key in msg and says in msg, msg
    assert "/tmp/enmei.toml:" in msg, msg  # file and line


def test_sockets_that_clash_are_refused_by_name() -> None:
    two = HEAD + '[[units.web.sockets]]\naddress = "127.0.0.1:80"\n[[units.web.sockets]]\naddress = "127.0.0.1:80"\n'
    assert "sockets[1].address '127.0.0.1:80' is also sockets[0]" in _error(two)
    named = (HEAD + '[[units.web.sockets]]\naddress = "127.0.0.1:80"\nname = "x"\n'
             '[[units.web.sockets]]\naddress = "127.0.0.1:81"\nname = "x"\n')
    assert "sockets[1].name 'x' is also the name of sockets[0]" in _error(named)
    listed = HEAD.replace('"1"]\n', '"1"]\nlisten = ["127.0.0.1:80"]\n') + \
        '[[units.web.sockets]]\naddress = "127.0.0.1:80"\n'
    assert "is also in listen" in _error(listed)


def test_restart_mode_handover_needs_sockets_and_no_limits() -> None:
    assert "needs [[sockets]]" in _error(HEAD + 'restart_mode = "handover"\n')
    limited = (HEAD + 'restart_mode = "handover"\nmemory_max = "64MiB"\n'
               '[[units.web.sockets]]\naddress = "127.0.0.1:80"\n')
    assert "with memory_max" in _error(limited)
    assert "units.web.restart_mode" in _error(HEAD + 'restart_mode = "swap"\n')


def test_the_listen_fds_protocol_pieces() -> None:
    assert listen_env(["http"]) == {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}
    script = launcher_script([7, 9])
    assert script.startswith("exec 3<&7 4<&9 7<&- 9<&-;") and "LISTEN_PID=$$" in script
    assert split_address("127.0.0.1:80")[1:] == ("127.0.0.1", 80)


@pytest.mark.parametrize(("value", "problem"), [
    ([], "command is empty"), ("", "command is empty"), (["a", 1], "a string or a list of strings"),
    ("a 'b", "No closing quotation"), (["a\0b"], "no NUL"),
])
def test_an_update_command_that_cannot_run_is_refused(value: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_command(value)
