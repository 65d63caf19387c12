"""Grouping and parsing accuracy as the benchmark defines them."""

from __future__ import annotations

import pytest

from enmei.logs.accuracy import grouping_accuracy, parsing_accuracy


def test_grouping_accuracy_counts_only_groups_equal_to_a_true_group() -> None:
    # group 7 is exactly truth "a"; group 8 mixes b and c: its three lines are wrong; 9 is "d" split in two
    pred = [7, 7, 8, 8, 8, 9, 10]
    truth = ["a", "a", "b", "b", "c", "d", "d"]
    assert grouping_accuracy(pred, truth) == pytest.approx(2 / 7)
    assert grouping_accuracy(truth, truth) == 1.0


def test_parsing_accuracy_compares_normalised_templates() -> None:
    assert parsing_accuracy(["x <*>:<*> y", "x  y"], ["x <*> y", "x y"]) == 1.0
    assert parsing_accuracy(["x <*> y", "open <*>"], ["x z y", "open <*>"]) == 0.5
    with pytest.raises(ValueError, match="same length"):
        parsing_accuracy(["a"], [])
