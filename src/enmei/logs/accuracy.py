"""Grouping and parsing accuracy of a template miner against ground truth (the standard definitions).

* **Grouping accuracy (GA)**: a line is grouped right when the set of lines in its predicted group is
  exactly the set of lines in its true group; GA is the share of lines grouped right.
* **Parsing accuracy (PA)**: a line is parsed right when its predicted template (the final template of
  its group, after the whole stream) equals its true template, both put through
  :func:`enmei.logs.masking.normalise_template`; PA is the share of lines parsed right.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

from enmei.logs.masking import normalise_template

__all__ = ["grouping_accuracy", "parsing_accuracy"]


def grouping_accuracy(predicted: Sequence[Hashable], truth: Sequence[Hashable]) -> float:
    """GA of per-line group labels ``predicted`` against ``truth`` (same length, not empty).

    >>> grouping_accuracy([1, 1, 2, 3], ["a", "a", "b", "b"])
    0.5
    """
    if len(predicted) != len(truth) or not truth:
        raise ValueError("predicted and truth must be non-empty and of the same length")
    truth_sizes = Counter(truth)
    members: dict[Hashable, list[Hashable]] = defaultdict(list)
    for p, t in zip(predicted, truth, strict=True):
        members[p].append(t)
    right = 0
    for ts in members.values():
        first = ts[0]
        if truth_sizes[first] == len(ts) and all(t == first for t in ts):
            right += len(ts)
    return right / len(truth)


def parsing_accuracy(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """PA of per-line templates ``predicted`` against ``truth``, both normalised.

    >>> parsing_accuracy(["a <*> b", "x <*>:<*>"], ["a <*>  b", "x <*>"])
    1.0
    """
    if len(predicted) != len(truth) or not truth:
        raise ValueError("predicted and truth must be non-empty and of the same length")
    cache: dict[str, str] = {}

    def norm(s: str) -> str:
        n = cache.get(s)
        if n is None:
            n = cache[s] = normalise_template(s)
        return n

    return sum(norm(p) == norm(t) for p, t in zip(predicted, truth, strict=True)) / len(truth)
