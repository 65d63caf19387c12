"""The file part of cross-view: the guest's listing of its files, and which files count as hidden."""

from __future__ import annotations

import pytest

from enmei.config.model import CrossviewProbe
from enmei.monitor.crossview import InsideReader
from enmei.monitor.crossview_files import FileView, compare_files, data_dir


def test_the_inside_reader_takes_the_file_part() -> None:
    r = InsideReader()
    done = r.feed(["enmei-ps: begin 1 1.0", "enmei-ps: file /data/bin/ls", "enmei-ps: file /data/bin/a b",
                   "enmei-ps: files 2", "enmei-ps: end 1 1.1", "enmei-ps: begin 2 2.0", "enmei-ps: end 2 2.1"])
    assert done[0].files == frozenset({"/data/bin/ls", "/data/bin/a b"}) and done[1].files is None
    assert r.feed(["enmei-ps: begin 3 3.0", "enmei-ps: files 1", "enmei-ps: end 3 3.1"]) == []  # torn


def test_a_file_on_the_disk_all_through_the_listing_and_not_in_it_is_hidden() -> None:
    before = FileView(frozenset({"/data/bin/ls", "/data/bin/.enmei-stash", "/data/bin/old"}))
    after = FileView(frozenset({"/data/bin/ls", "/data/bin/.enmei-stash", "/data/bin/new"}))
    hidden, reason = compare_files({"/data/bin/ls"}, before, after)
    assert reason == "" and hidden == ["/data/bin/.enmei-stash"]  # old was removed, new created: races
    assert compare_files({"/data/bin/ls", "/data/bin/.enmei-stash"}, before, after) == ([], "")


def test_no_comparison_without_both_views_or_a_file_part() -> None:
    v = FileView(frozenset({"/data/x"}))
    assert compare_files(None, v, v) == ([], "the listing has no file part")
    assert compare_files(set(), None, v)[1].startswith("no outside file view before")
    assert compare_files(set(), v, FileView(frozenset(), "torn")) == ([], "torn")


def test_only_directories_under_data_are_read() -> None:
    assert data_dir("/data/bin") == "/bin"
    with pytest.raises(ValueError, match="not under /data"):
        data_dir("/etc")
    with pytest.raises(ValueError, match="not under /data"):
        CrossviewProbe.model_validate({"kind": "crossview", "file_dirs": ["/data/../etc"]})
    assert CrossviewProbe.model_validate({"kind": "crossview", "file_dirs": ["/data/bin"]}).file_dirs == ["/data/bin"]
