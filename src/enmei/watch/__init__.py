"""A monitor for the monitor: ``enmei watch`` checks an enmei from outside and restarts it when it dies or hangs.

Two halves, one on each side of the process boundary:

* ``enmei.watch.beat`` runs *inside* enmei (one task set next to the engine): a heartbeat file
  ``<state_dir>/heartbeat`` rewritten in place every ``BEAT_EVERY_S`` while the engine's loop makes
  progress, the watchers' reports journaled (and alerted) once enmei is up again, and the restart of a
  ``--mutual`` watcher that died.
* ``enmei.watch.watcher`` (run as ``python -m enmei.watch``) is the watcher: a small process that imports
  only the standard library and the ctl client, so that what takes down enmei (its heavy dependencies,
  its loop) is not in it.

Nothing here imports anything heavy at package level: ``python -m enmei.watch`` stays small.
"""

__all__: list[str] = []
