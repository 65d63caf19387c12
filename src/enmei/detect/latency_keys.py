"""The defaults of the ``latency`` detector, light enough for the config to import (stdlib only).

``LEARNING``: samples each probe's stream learns before it is judged — chosen by ``enmei bench detect``'s
k-fold protocol over NAB's files among the lengths that judge a probe within minutes at a 1–5 s
interval (see the README, "Detection: which detector runs where"). ``ALPHA``: the nominal false-alarm
probability per sample at which a latency verdict is made — 1e-6, as before round 6 (``latency_alpha``
keeps its default and its meaning); lower than ``metric``'s 1e-4 because the novelty detector alarms
more often than its nominal alpha on i.i.d. noise (each new record of the range is new to several
families at once), and a latency verdict is acted on.
"""

from __future__ import annotations

__all__ = ["ALPHA", "LEARNING", "LEARNING_CANDIDATES"]

#: The learning lengths the benchmark compared (samples).
LEARNING_CANDIDATES = (30, 60, 120, 250)
LEARNING = 60
ALPHA = 1e-6
