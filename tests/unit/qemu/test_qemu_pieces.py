"""Pure parts of the QEMU backend: console phases, pcap counting, cpio, key chords, module order."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from enmei.visor.qemu.console import ConsoleReader, parse_phase
from enmei.visor.qemu.cpio import CpioWriter
from enmei.visor.qemu.monitor_api import text_to_qcodes
from enmei.visor.qemu.netcount import PcapCounter


def test_console_reader_keeps_the_phases_of_the_current_boot(tmp_path: Path) -> None:
    con = tmp_path / "console.log"
    con.write_bytes(b"old run\nenmei-phase: kernel t=1.0\nenmei-phase: service-ready t=3\n")
    start = con.stat().st_size
    reader = ConsoleReader(con, offset=start)  # a new QEMU appends after the old output
    assert reader.poll(10.0) == []
    with open(con, "ab") as f:
        f.write(b"[ 0.1] noise\nenmei-phase: kernel t=1.5\nenmei-phase: userspace t=2")
    marks = reader.poll(11.0)
    assert [m.phase for m in marks] == ["kernel"]  # the userspace line is not complete yet
    with open(con, "ab") as f:
        f.write(b".25\r\nenmei-keys: hi\n")
    marks = reader.poll(12.0)
    assert [(m.phase, m.uptime_s, m.mono, m.boot) for m in marks] == [("userspace", 2.25, 12.0, 1)]
    assert list(reader.phases) == ["kernel", "userspace"]
    assert reader.tail(1) == ["enmei-keys: hi"]
    with open(con, "ab") as f:
        f.write(b"enmei-phase: kernel t=1.4\n")  # a reboot
    reader.poll(13.0)
    assert list(reader.phases) == ["kernel"] and reader.boot == 2
    reader.forget_phases()
    assert reader.phases == {}


def test_console_reader_of_a_missing_file_reads_nothing(tmp_path: Path) -> None:
    assert ConsoleReader(tmp_path / "nope").poll(1.0) == []
    assert parse_phase("enmei-phase: data-ready") == ("data-ready", None)


def _pcap(records: list[tuple[int, int]], endian: str = "<") -> bytes:
    out = struct.pack(endian + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 64, 1)
    for incl, orig in records:
        out += struct.pack(endian + "IIII", 1, 2, incl, orig) + b"x" * incl
    return out


def test_pcap_counter_counts_whole_records_across_reads(tmp_path: Path) -> None:
    data = _pcap([(64, 1514), (42, 42), (64, 100)])
    path = tmp_path / "net.pcap"
    c = PcapCounter()
    for cut in (10, 30, 100, 170, len(data)):
        path.write_bytes(data[:cut])
        c.read_file(path)
    assert (c.packets, c.bytes) == (3, 1656)
    c.restart()  # a fresh file: totals kept
    path.write_bytes(_pcap([(10, 60)], ">"))
    c.read_file(path)
    assert (c.packets, c.bytes) == (4, 1716)


def test_pcap_counter_refuses_another_format() -> None:
    with pytest.raises(ValueError, match="pcap"):
        PcapCounter().feed(b"\0" * 40)


def _parse_newc(data: bytes) -> dict[str, tuple[int, bytes, int, int]]:
    out: dict[str, tuple[int, bytes, int, int]] = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos: pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (f[1], body, f[9], f[10])


def test_cpio_writer_makes_a_newc_archive_the_kernel_can_read() -> None:
    w = CpioWriter()
    w.directory("etc")
    w.file("etc/hostname", b"guest\n")
    w.symlink("init", "bin/busybox")
    w.char_device("dev/console", 5, 1)
    assert "etc/hostname" in w
    with pytest.raises(ValueError, match="already present"):
        w.file("/etc/hostname/", b"again")
    entries = _parse_newc(w.finish())
    assert entries["etc/hostname"][1] == b"guest\n"
    assert entries["etc"][0] & 0o170000 == 0o040000
    assert entries["init"][0] & 0o170000 == 0o120000 and entries["init"][1] == b"bin/busybox"
    assert entries["dev/console"][0] & 0o170000 == 0o020000
    assert entries["dev/console"][2:] == (5, 1)
    assert gzip.decompress(gzip.compress(b"x", mtime=0)) == b"x"


def test_text_becomes_key_chords() -> None:
    assert text_to_qcodes("a Z-?\n") == [["a"], ["spc"], ["shift", "z"], ["minus"], ["shift", "slash"], ["ret"]]
    with pytest.raises(ValueError, match="no key"):
        text_to_qcodes("é")


def test_console_reader_follows_a_rotated_file(tmp_path: Path) -> None:
    from enmei.visor.logs import rotate

    con = tmp_path / "console.log"
    con.write_bytes(b"enmei-phase: kernel t=1\n" + b"x" * 200 + b"\n")
    reader = ConsoleReader(con)
    reader.poll(1.0)
    assert rotate(con, 100, keep=1)
    assert (tmp_path / "console.log.1").exists() and con.stat().st_size == 0
    with open(con, "ab") as f:
        f.write(b"enmei-phase: userspace t=2\n")
    assert [m.phase for m in reader.poll(2.0)] == ["userspace"]
    assert list(reader.phases) == ["kernel", "userspace"]
