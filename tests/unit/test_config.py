from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from enmei.config import ProcessUnit, QemuUnit, check, load
from enmei.errors import ConfigError

GOOD = """
[supervisor]
state_dir = "st"

[units.web]
command = ["/bin/sleep", "10"]
listen = ["127.0.0.1:8080"]

[[units.web.probes]]
kind = "http"
url = "http://127.0.0.1:8080/health"

[[units.web.probes]]
kind = "process"
"""


def test_good_config_loads_with_defaults(write_config) -> None:
    loaded = load(write_config(GOOD))
    web = loaded.config.units["web"]
    assert isinstance(web, ProcessUnit)
    assert web.command == ["/bin/sleep", "10"]
    assert web.stop_timeout_s == 10.0
    assert web.restart.budget == 5
    assert loaded.state_dir == (loaded.base_dir / "st").resolve()
    assert loaded.journal_path.name == "journal.sqlite"
    assert len(loaded.sha256) == 64


def test_command_as_string_is_split(write_config) -> None:
    loaded = load(write_config('[units.a]\ncommand = "/bin/sleep 10"\n'))
    unit = loaded.config.units["a"]
    assert isinstance(unit, ProcessUnit)
    assert unit.command == ["/bin/sleep", "10"]


def test_unknown_key_names_file_line_key_and_suggests(write_config) -> None:
    path = write_config('[units.a]\ncommand = ["/bin/true"]\nstop_timout_s = 3\n')
    with pytest.raises(ConfigError) as ei:
        load(path)
    err = ei.value
    assert err.file == str(path)
    assert err.line == 3
    assert err.key == "units.a.stop_timout_s"
    assert "did you mean 'stop_timeout_s'" in str(err)
    assert str(err).startswith(f"{path}:3: units.a.stop_timout_s")


def test_malformed_toml_names_line(write_config) -> None:
    path = write_config('[units.a]\ncommand = ["/bin/true"\n')
    problems = check(path)
    assert len(problems) == 1
    assert problems[0].line is not None
    assert "not valid TOML" in problems[0].message


def test_every_problem_reported_in_file_order(write_config) -> None:
    path = write_config("""
[units.web]
command = ["/bin/true"]
bogus = 1

[[units.web.probes]]
kind = "http"
url = "http://example.com/"

[[units.web.probes]]
kind = "tcp"
port = 99999
""")
    problems = check(path)
    assert [p.line for p in problems] == [4, 8, 12]
    assert "loopback only" in problems[1].message
    assert problems[2].key == "units.web.probes[1].port"


def test_missing_command_and_not_executable(write_config, tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o644)
    path = write_config(f"""
[units.a]
command = ["no-such-command-enmei"]

[units.b]
command = ["{script}"]
""")
    problems = check(path)
    assert len(problems) == 2
    assert "is not on PATH" in str(problems[0]) and problems[0].line == 3
    assert "is not executable" in str(problems[1]) and problems[1].key == "units.b.command"


def test_missing_required_key(write_config) -> None:
    problems = check(write_config("[units.a]\ncwd = '.'\n"))
    assert len(problems) == 1
    assert problems[0].key == "units.a.command"
    assert "missing required key 'command'" in problems[0].message


def test_bad_backend_and_bad_unit_name(write_config) -> None:
    problems = check(write_config('[units."bad name"]\ncommand = ["/bin/true"]\n'))
    assert "unit name 'bad name'" in str(problems[0])
    problems = check(write_config('[units.x]\nbackend = "docker"\n'))
    assert "'docker'" in str(problems[0]) and "'process', 'qemu'" in str(problems[0])
    assert problems[0].line == 1


def test_duplicate_probe_names_rejected(write_config) -> None:
    problems = check(write_config("""
[units.a]
command = ["/bin/true"]
[[units.a.probes]]
kind = "process"
[[units.a.probes]]
kind = "process"
"""))
    assert len(problems) == 1
    assert "two probes are named 'proc'" in str(problems[0])


def test_qemu_unit_validates_forward(write_config) -> None:
    loaded = load(write_config('[units.vm]\nbackend = "qemu"\nforward = ["18080:80"]\n'))
    assert isinstance(loaded.config.units["vm"], QemuUnit)
    problems = check(write_config('[units.vm]\nbackend = "qemu"\nforward = ["80"]\n'))
    assert problems and "HOSTPORT:GUESTPORT" in str(problems[0])


def test_no_such_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.toml")


def test_config_is_frozen(write_config) -> None:
    loaded = load(write_config(GOOD))
    with pytest.raises(ValidationError, match="frozen"):
        loaded.config.units["web"].stop_timeout_s = 1  # type: ignore[misc]


# -- D14: every config error names file:line and key -------------------------------------------------

def test_a_bad_unit_name_is_located_at_its_table(write_config) -> None:
    path = write_config('[supervisor]\nstate_dir = "st"\n\n[units."bad name"]\ncommand = ["/bin/true"]\n'
                        '[units.good]\ncommand = ["/bin/true"]\n')
    (problem,) = check(path)
    assert (problem.line, problem.key) == (4, 'units."bad name"')
    assert str(problem).startswith(f"{path}:4: units.\"bad name\": unit name 'bad name': use letters")


def test_a_bad_unit_name_in_a_dotted_key_is_located_too(write_config) -> None:
    (problem,) = check(write_config('[units]\nok.command = ["/bin/true"]\n"a:b".command = ["/bin/true"]\n'))
    assert (problem.line, problem.key) == (3, 'units."a:b"')


def test_a_missing_policy_file_is_located_in_the_config(write_config) -> None:
    path = write_config('[supervisor]\nstate_dir = "st"\npolicy = "no-such-policy.star"\n'
                        '[units.a]\ncommand = ["/bin/true"]\n')
    (problem,) = check(path)
    assert (problem.line, problem.key) == (3, "supervisor.policy")
    assert str(problem) == (f"{path}:3: supervisor.policy: policy file "
                            f"{str(path.parent / 'no-such-policy.star')!r} does not exist")
    with pytest.raises(ConfigError, match=r"no-such-policy\.star' does not exist"):
        load(path)


def test_a_policy_that_is_a_directory_is_refused(write_config, tmp_path: Path) -> None:
    (tmp_path / "pol").mkdir()
    path = write_config('[supervisor]\npolicy = "pol"\n')
    (problem,) = check(path)
    assert problem.line == 2 and "is not a file" in problem.message
