"""Counting a guest's network traffic from outside: an incremental reader of ``filter-dump`` files.

QEMU's ``filter-dump`` object (one per direction on the guest's user netdev) appends every frame to a
pcap file, cut to its first 64 bytes. ``PcapCounter`` reads what was appended since the last call and
adds up frames and their original lengths (bytes on the wire, Ethernet header included). It reads only
whole records, so a record QEMU is still writing is counted on the next call.

Why this method: QEMU 7.2 exposes no per-netdev counters over QMP, and anything inside the guest is
not trusted (the monitor stays outside). The files grow by 80 bytes per frame at most; the backend
starts a fresh file past a size limit (see ``QemuBackend.net_stats``).

>>> import struct
>>> hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 64, 1)
>>> rec = struct.pack("<IIII", 0, 0, 4, 1500) + b"abcd"
>>> c = PcapCounter()
>>> c.feed(hdr + rec + rec[:5])
>>> (c.packets, c.bytes)
(1, 1500)
>>> c.feed(rec[5:])
>>> (c.packets, c.bytes)
(2, 3000)
"""

from __future__ import annotations

import builtins
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PcapCounter"]

_GLOBAL = 24
_RECORD = 16


@dataclass
class PcapCounter:
    """Frames and bytes seen in one pcap stream so far."""

    packets: int = 0
    bytes: int = 0
    syn: int = 0  # TCP connection openings (SYN without ACK) among the frames: who called whom
    offset: int = 0  # bytes of the file consumed
    _buf: builtins.bytes = b""
    _header_seen: bool = False
    _endian: str = "<"

    def feed(self, data: builtins.bytes) -> None:
        """Count the whole records in ``data`` (appended to any unfinished record of the last call)."""
        buf = self._buf + data
        pos = 0
        if not self._header_seen:
            if len(buf) < _GLOBAL:
                self._buf = buf
                return
            magic = buf[:4]
            if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
                self._endian = "<"
            elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
                self._endian = ">"
            else:
                raise ValueError("not a pcap stream")
            self._header_seen = True
            pos = _GLOBAL
        fmt = self._endian + "IIII"
        while len(buf) - pos >= _RECORD:
            _, _, incl, orig = struct.unpack_from(fmt, buf, pos)
            if len(buf) - pos - _RECORD < incl:
                break
            frame = buf[pos + _RECORD:pos + _RECORD + incl]
            pos += _RECORD + incl
            self.packets += 1
            self.bytes += orig
            self.syn += _is_syn(frame)
        self._buf = buf[pos:]

    def read_file(self, path: Path) -> None:
        """Count what was appended to ``path`` since the last call (a missing file counts nothing)."""
        try:
            with open(path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        self.offset += len(data)
        self.feed(data)

    def restart(self) -> None:
        """Keep the totals, but expect a new file from its first byte."""
        self.offset = 0
        self._buf = b""
        self._header_seen = False


def _is_syn(frame: builtins.bytes) -> int:
    """1 if ``frame`` (Ethernet, cut to 64 bytes) is an IPv4 TCP segment with SYN set and ACK not."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return 0
    ihl = (frame[14] & 0x0F) * 4
    flags_at = 14 + ihl + 13
    if len(frame) <= flags_at:
        return 0
    return 1 if frame[flags_at] & 0x12 == 0x02 else 0
