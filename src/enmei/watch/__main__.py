"""``python -m enmei.watch TARGET...``: the watcher process (``enmei watch`` execs this; see
``enmei.watch.watcher``). Exit codes: 0 stopped on request, 2 bad usage, 3 a target cannot be watched."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enmei.watch.watcher import Options, TargetError, Watcher


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="enmei watch", description="Watch enmei supervisors from outside.")
    p.add_argument("targets", nargs="+", type=Path, help="config files or state dirs of the enmeis to watch")
    p.add_argument("--name", default="watch", help="this watcher's name (two watchers of one enmei differ)")
    p.add_argument("--mutual", action="store_true", help="the watched enmei restarts this watcher if it dies")
    p.add_argument("--hang-after-s", type=float, default=Options.hang_after_s)
    p.add_argument("--grace-s", type=float, default=Options.grace_s)
    p.add_argument("--ctl-timeout-s", type=float, default=Options.ctl_timeout_s)
    p.add_argument("--backoff-first-s", type=float, default=Options.backoff_first_s)
    p.add_argument("--backoff-max-s", type=float, default=Options.backoff_max_s)
    p.add_argument("--no-start", action="store_true", help="do not start an enmei that is not running at first")
    a = p.parse_args(argv)
    if not a.name.replace("-", "").replace("_", "").isalnum() or len(a.name) > 64:
        p.error(f"--name {a.name!r}: letters, digits, - and _ only")
    for key in ("hang_after_s", "grace_s", "ctl_timeout_s", "backoff_first_s", "backoff_max_s"):
        if not getattr(a, key) > 0:
            p.error(f"--{key.replace('_', '-')} must be > 0")
    opts = Options(name=a.name, mutual=a.mutual, hang_after_s=a.hang_after_s, grace_s=a.grace_s,
                   ctl_timeout_s=a.ctl_timeout_s, backoff_first_s=a.backoff_first_s,
                   backoff_max_s=a.backoff_max_s, start=not a.no_start)
    try:
        return Watcher(a.targets, opts).run()
    except TargetError as exc:
        print(f"enmei watch: error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
