"""The template miner: generic masking, stable ids across save/load, drift, bounds, and bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from enmei.errors import EnmeiError
from enmei.logs import masking
from enmei.logs.masking import forget_memos, mask_line, mask_token, normalise_template
from enmei.logs.miner import FORMAT, MinerSettings, TemplateFileError, TemplateMiner


@pytest.mark.parametrize(("token", "masked"), [
    ("1234", "<*>"),
    ("-17", "<*>"),
    ("12ms", "<*>"),
    ("uid=1000", "uid=<*>"),
    ("10.250.19.102:54106", "<*>:<*>"),
    ("0x7fff5fbff8c8", "<*>"),
    ("550e8400-e29b-41d4-a716-446655440000", "<*>"),
    ("00:1b:44:11:3a:b7", "<*>"),
    ("/var/log/nginx/access.log", "<*>"),
    ("http://example.org:8080/a/b?c=1", "http://<*>"),
    ("blk_-1608999687919862906", "<*>"),
    ("core.2275", "core.<*>"),
    ("[DFSClient_NONMAPREDUCE_1537864556_1]", "[<*>]"),  # six digits in a row: an id
    ("sha256sum", "sha256sum"),  # fewer: a word
    ("alignment......0", "alignment......<*>"),
    ("#12", "#<*>"),
    ("1256521728.", "<*>."),
    ("ok=true", "ok=<*>"),
    # words with a digit in them are words
    ("en0:", "en0:"),
    ("SOCKS5", "SOCKS5"),
    ("ipv6", "ipv6"),
    ("Connection", "Connection"),
])
def test_masking_rules(token: str, masked: str) -> None:
    assert mask_token(token) == masked


def test_variables_spanning_tokens_are_one_wildcard() -> None:
    assert mask_line("at 2005-06-03 15:42:50 from 10.0.0.1 port 22", 100) == ["at", "<*>", "from", "<*>", "port", "<*>"]
    assert normalise_template("a <*>:<*>  <*>-<*> b") == "a <*> b"


def test_masking_a_line_by_its_shape_is_masking_each_token() -> None:
    # A line's masks are memoised by shape (digits written alike): tokens whose digits survive masking,
    # a 0 before an x (hex), and values that differ only in their digits must come out as if each token
    # were masked on its own, whatever was seen before.
    tokens = ["en0", "en5", "SOCKS5", "SOCKS4", "0x1f", "10x5", "1x0f", "a0x3", "0X00ff:7", "ipv6", "ipv4",
              "blk_-1608999687919862906", "blk_-1111111111111111111", "log4j", "v2.1", "h264", "x86_64",
              "10.0.0.1:80", "/a/b0/c", "ab12", "a123", "1a", "é5", "٣٤"]
    forget_memos()
    expect = []
    for t in tokens:
        m = mask_token(t)
        expect.append("<*>" if m != "<*>" and "<*>" in m and masking._WILD_RUN.fullmatch(m) else m)
    for order in (tokens, list(reversed(tokens))):
        forget_memos()
        for t in order:
            assert mask_line(f"x {t} y", 10) == ["x", expect[tokens.index(t)], "y"], t


def test_an_exact_repeat_takes_the_line_cache_and_its_template_stays_right() -> None:
    m = TemplateMiner(MinerSettings(cache_size=3))
    first = m.add("worker 7 took 12ms").template_id
    assert m.add("worker 7 took 12ms").template_id == first
    for i in range(10):  # past the cache bound: the caches start again, the answer stays the same
        m.add(f"job {i} of kind k{i}x done")
    assert len(m._lines) <= 3 and len(m._cache) <= 3
    assert m.add("worker 7 took 12ms") == (first, "worker <*> took <*>", "none")


USERS = ["root", "alice", "bob", "carol", "dave", "erin", "frank"]


def _lines(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    kinds = [
        lambda: (f"Accepted password for {rng.choice(USERS)} from 10.0.{rng.randint(0, 255)}."
                 f"{rng.randint(1, 254)} port {rng.randint(1024, 65535)} ssh2"),
        lambda: f"Connection closed by {rng.randint(1, 254)}.{rng.randint(0, 255)}.1.2 [preauth]",
        lambda: f"session opened for user {rng.choice(USERS)} by (uid={rng.randint(0, 2000)})",
        lambda: (f"worker {rng.randint(1, 64)} took {rng.randint(1, 999)}ms to serve "
                 f"/api/v1/items/{rng.randint(1, 10**6)}"),
    ]
    return [rng.choice(kinds)() for _ in range(n)]


def test_one_template_per_message_type_and_ids_stable_across_save_and_load(tmp_path: Path) -> None:
    m = TemplateMiner()
    first = [m.add(line).template_id for line in _lines(1, 400)]
    first = [m.resolve(i) for i in first]  # ids given out before a family of them was merged into one
    assert len(m.templates()) == 4
    assert any(t.text == "Accepted password for <*> from <*> port <*> ssh2" for t in m.templates())
    path = tmp_path / "templates.json"
    m.save(path)
    again = TemplateMiner.load(path)
    assert [t.text for t in again.templates()] == [t.text for t in m.templates()]
    # the same lines map to the same ids after the restart, and the next new template gets a fresh id
    assert [again.add(line).template_id for line in _lines(1, 400)] == first
    new = again.add("kernel: Out of memory: Killed process 4242 (python3)")
    assert new.change == "new" and new.template_id > max(first)
    assert new.template_id not in {t.id for t in m.templates()} | set(first)
    assert json.loads(path.read_text())["format"] == FORMAT


def test_a_different_word_is_another_message_type_until_many_words_differ_there() -> None:
    m = TemplateMiner(MinerSettings(family=4))
    started = m.add("VM Started (Lifecycle Event)").template_id
    paused = m.add("VM Paused (Lifecycle Event)").template_id
    assert started != paused
    assert m.add("VM Started (Lifecycle Event)").template_id == started
    m.add("VM Resumed (Lifecycle Event)")
    fourth = m.add("VM Stopped (Lifecycle Event)")
    # four words at one place: a variable; the oldest id stands for them all, the others resolve to it
    assert fourth.change == "grown" and fourth.template_id == started and fourth.template == "VM <*> (Lifecycle Event)"
    assert m.resolve(paused) == started
    assert m.add("VM Paused (Lifecycle Event)").template_id == started
    assert m.add("VM Crashed (Lifecycle Event)").template_id == started
    again = TemplateMiner.loads(m.dumps())
    assert again.resolve(paused) == started and [t.text for t in again.templates()] == ["VM <*> (Lifecycle Event)"]


def test_drift_a_new_message_type_later_is_a_new_template() -> None:
    m = TemplateMiner()
    for line in _lines(2, 200):
        m.add(line)
    before = {t.id for t in m.templates()}
    changes = [m.add(f"disk /dev/sd{c} is full: {n} bytes left").change for c, n in zip("abc", (10, 0, 3), strict=True)]
    assert changes[0] == "new" and changes[1:] == ["none", "none"]
    assert len({t.id for t in m.templates()} - before) == 1


def test_memory_is_bounded_ids_are_never_reused() -> None:
    m = TemplateMiner(MinerSettings(max_templates=10, cache_size=16))
    ids = [m.add(f"kind{chr(97 + i % 26)}{chr(97 + i // 26 % 26)} happened").template_id for i in range(200)]
    assert len(m.templates()) == 10
    assert m.evicted == 190
    assert len(set(ids)) == 200  # a forgotten template's id is not given out again


def test_bad_input_never_raises() -> None:
    m = TemplateMiner(MinerSettings(max_line_chars=4096, max_tokens=64))
    rng = random.Random(3)
    garbage = bytes(rng.randrange(256) for _ in range(5000))
    m.add(garbage)
    m.add(b"caf\xc3 \xff\xfe invalid utf-8 \x00")
    m.add("lone surrogate \udcff here")
    m.add("x" * (1 << 20))  # a 1 MB line without spaces
    big = m.add(" ".join(["word"] * (1 << 18)))  # a 1 MB line of many tokens
    assert len(big.template.split()) <= 65
    m.add("")
    # everything it learnt can still be saved and loaded
    again = TemplateMiner.loads(m.dumps())
    assert len(again.templates()) == len(m.templates())


@pytest.mark.parametrize(("text", "reason"), [
    (b"\x00\xffnot json", "not JSON"),
    ("[1, 2]", "not a template file"),
    (json.dumps({"format": FORMAT, "version": 99}), "version 99"),
    (json.dumps({"format": FORMAT, "version": 1, "settings": {}, "next_id": 1,
                 "templates": [{"id": 5, "tokens": ["a"]}]}), "not below next_id"),
    (json.dumps({"format": FORMAT, "version": 1, "settings": {"similarity": 7}, "next_id": 1, "templates": []}),
     "similarity"),
    (json.dumps({"format": FORMAT, "version": 1, "settings": {"bogus": 1}, "next_id": 1, "templates": []}), "bogus"),
])
def test_a_corrupt_or_foreign_file_is_a_clear_error(tmp_path: Path, text: str | bytes, reason: str) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TemplateFileError) as ei:
        TemplateMiner.load(path)
    assert str(path) in str(ei.value) and reason in str(ei.value)
    assert isinstance(ei.value, EnmeiError)


def test_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(TemplateFileError, match=r"nothere\.json"):
        TemplateMiner.load(tmp_path / "nothere.json")
