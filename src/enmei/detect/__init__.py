"""Failure and precursor detection: streaming detectors (score) apart from thresholds (decide).

See :mod:`enmei.detect.base` for the protocol every detector keeps.
"""
