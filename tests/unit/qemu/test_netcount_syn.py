"""Connection openings counted in the guest's frames: a SYN without ACK is one, a SYN-ACK or data is not."""

from __future__ import annotations

import struct

from enmei.visor.qemu.netcount import PcapCounter


def _frame(flags: int, *, proto: int = 6, ethertype: bytes = b"\x08\x00") -> bytes:
    eth = b"\x02" * 12 + ethertype
    ip = bytes([0x45, 0]) + struct.pack(">H", 40) + b"\0" * 5 + bytes([proto]) + b"\0" * 10
    tcp = b"\0" * 13 + bytes([flags]) + b"\0" * 6
    return eth + ip + tcp


def _pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 64, 1)
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    return out


def test_only_syn_without_ack_counts_as_an_opening() -> None:
    c = PcapCounter()
    c.feed(_pcap([_frame(0x02), _frame(0x12), _frame(0x10), _frame(0x02, proto=17), _frame(0x02, ethertype=b"\x86\xdd"),
                  b"\x00" * 20]))
    assert (c.packets, c.syn) == (6, 1)
