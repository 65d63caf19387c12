"""The guest networking rule, seen from inside the guest: only forwards and guestfwd commands."""

from __future__ import annotations

import asyncio
import shlex
import socket
from pathlib import Path

import pytest

from .conftest import VmHarness, http_get

pytestmark = [pytest.mark.integration, pytest.mark.qemu]


async def test_guest_reaches_guestfwd_commands_and_not_the_host(vmh: VmHarness, tmp_path: Path) -> None:
    sink = tmp_path / "from-guest.txt"
    b = vmh.backend()
    # QEMU runs the command without a shell (its words are split like a shell would)
    spec = vmh.spec(guestfwd=[f"7000=sh -c {shlex.quote('cat > ' + shlex.quote(str(sink)))}"])
    port = int(spec.forward[0].split(":")[0])
    await b.start("vm", spec)

    # anything the guest sends to 10.0.2.100:7000 goes to the local command, and only there
    assert await http_get(port, "/cgi-bin/net?to=10.0.2.100:7000", 10) == (200, "reached\n")
    await vmh.wait_for("the guest's line in the sink", lambda: sink.exists() and sink.read_text())
    assert sink.read_text() == "hello from the guest\n"

    # a service listening on the host's loopback is not reachable from the guest (restrict=on)
    accepted: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        host_port = listener.getsockname()[1]
        answer = await http_get(port, f"/cgi-bin/net?to=10.0.2.2:{host_port}", 10)
        await asyncio.sleep(0.2)
        try:
            conn, _ = listener.accept()
            accepted.append(conn.recv(100))
            conn.close()
        except BlockingIOError:
            pass
    assert answer == (200, "blocked\n")
    assert accepted == []
