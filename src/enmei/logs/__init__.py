"""Logs: streaming template mining (message types), and what is built on it.

``miner``: lines → stable template ids (a versioned JSON file, no pickle). ``masking``: the generic rules
that find a line's variable parts. ``accuracy``: grouping and parsing accuracy against ground truth.
"""
