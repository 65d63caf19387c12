"""``enmei update UNIT``: update a running unit with the shortest interruption its backend can do.

For a process unit: ``--command`` (the new version's command line; default: the unit's own), run by the
``handover`` remedy: the new version starts beside the old one on the sockets enmei holds and the old one
is stopped once the new one is ready (``enmei.remedy.handover``). For a VM unit: ``--image`` (a built
image's name or directory), or ``--kernel`` / ``--initrd`` (files;
the one not given stays the running guest's): the ``shadow_update`` remedy boots a clone into the
update while the unit serves, then swaps it in (``enmei.visor.qemu.shadow``). Asked of the running
supervisor over its ctl socket, like ``enmei ctl restart``; the steps are in the journal
(``enmei box tail``). Exit codes as ``enmei ctl``: 0 updated; 1 refused or rolled back; 7 no enmei answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from enmei.cli.common import console
from enmei.cli.ctl import ConfigOpt, JsonOpt, StateOpt, UnitArg, _ask, _print_json
from enmei.ctl.protocol import UPDATE_WAIT_S

__all__ = ["update"]


def update(unit: UnitArg,
           image: Annotated[str | None, typer.Option(help="A built image (name or directory) to update to")] = None,
           kernel: Annotated[Path | None, typer.Option(help="A kernel file to update to")] = None,
           initrd: Annotated[Path | None, typer.Option(help="An initramfs file to update to")] = None,
           clone_timeout_s: Annotated[float | None, typer.Option(help="Bound on the clone's boot")] = None,
           command: Annotated[str | None, typer.Option(help="A process unit's new command line (split like a "
                                                             "shell; default: the unit's own)")] = None,
           config: ConfigOpt = None, state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Update a running unit while it serves. A process unit (--command): the new version starts beside the
    old on the sockets enmei holds, the old stops once the new is ready. A VM unit (--image, --kernel,
    --initrd; ShadowReboot): a clone boots the update, then takes over in milliseconds. An update that
    fails is rolled back and the unit keeps serving (exit 1)."""
    if command is not None and (image is not None or kernel is not None or initrd is not None):
        raise typer.BadParameter("--command updates a process unit; --image/--kernel/--initrd a VM unit: not both")
    req: dict[str, Any] = {"op": "update", "unit": unit}
    if command is not None:
        req["command"] = command
    if image is not None:
        req["image"] = image if "/" not in image else str(Path(image).resolve())
    for key, path in (("kernel", kernel), ("initrd", initrd)):
        if path is not None:
            if not path.is_file():
                raise typer.BadParameter(f"{path}: no such file", param_hint=f"--{key}")
            req[key] = str(path.resolve())
    if clone_timeout_s is not None:
        req["clone_timeout_s"] = clone_timeout_s
    answer = _ask(config, state_dir, req, timeout_s=UPDATE_WAIT_S + 10.0)
    if as_json:
        _print_json(answer)
        return
    if answer.get("queued"):
        console.print(f"update {unit}: queued; {answer.get('note', '')}")
        return
    outcome = answer.get("outcome") or {}
    console.print(f"update {unit}: {outcome.get('detail') or 'done'} (record {answer.get('seq')})", highlight=False)
