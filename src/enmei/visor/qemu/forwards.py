"""Host port forwards of a running QEMU, changed through its human monitor (QEMU 7.2 has no QMP command for
``hostfwd_add``/``hostfwd_remove``): used where a guest changes hands between QEMU processes — the warm
standby's takeover and the VMM rejuvenation — and the forwards must follow it."""

from __future__ import annotations

from enmei.clock import Clock
from enmei.errors import VisorError
from enmei.visor.qemu.cmdline import NET_DEV
from enmei.visor.qemu.machine import Machine

__all__ = ["hmp", "host_forwards", "hostfwd_add", "parse_host_forwards"]


async def hmp(machine: Machine, command: str) -> str:
    """The human monitor's answer to ``command`` (empty when it succeeded, for most commands)."""
    return str(await machine.qmp().execute("human-monitor-command", {"command-line": command}))


async def hostfwd_add(machine: Machine, host: int, guest: int, *, clock: Clock, action: str, wait_s: float) -> None:
    """Forward 127.0.0.1:``host`` to the guest's ``guest`` port. The port may still be held for a moment by
    the QEMU that just gave it up: retried every 5 ms for ``wait_s``, then ``VisorError`` naming ``action``
    and QEMU's answer."""
    rule = f"tcp:127.0.0.1:{host}-:{guest}"
    deadline = clock.monotonic() + wait_s
    while True:
        answer = (await hmp(machine, f"hostfwd_add {NET_DEV} {rule}")).strip()
        if not answer:
            return
        if clock.monotonic() > deadline:
            raise VisorError(machine.name, action, f"hostfwd_add {rule}: {answer}")
        await clock.sleep(0.005)


async def host_forwards(machine: Machine) -> set[int]:
    """The loopback host ports ``machine`` forwards to its guest now (``info usernet``'s ``HOST_FORWARD``
    rows: ``TCP[HOST_FORWARD]  FD  127.0.0.1 PORT  10.0.2.15 PORT ...`` in QEMU 7.2)."""
    return parse_host_forwards(await hmp(machine, "info usernet"))


def parse_host_forwards(usernet: str) -> set[int]:
    """The loopback host ports in ``info usernet``'s answer ``usernet`` (``host_forwards``).

    >>> sorted(parse_host_forwards("  TCP[HOST_FORWARD]  13  127.0.0.1 18080  10.0.2.15 80  0  0\\r\\n"
    ...                            "  TCP[ESTABLISHED]   20  127.0.0.1 40000  10.0.2.15 80  0  0"))
    [18080]
    """
    ports: set[int] = set()
    for line in usernet.splitlines():
        words = line.split()
        if len(words) >= 4 and "HOST_FORWARD" in words[0] and words[2] == "127.0.0.1" and words[3].isdigit():
            ports.add(int(words[3]))
    return ports
