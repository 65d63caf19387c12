"""enmei (延命, "life extension"): keep services alive on an operating system that is assumed to fail.

Services run as processes or virtual machines; enmei watches them from outside, judges with statistical
detectors, decides with a sandboxed policy, repairs with life-extension mechanisms, and writes every step
to a tamper-evident journal. See ``DESIGN.md`` for the map and the README for a tour.
"""

import logging

__version__ = "0.1.0"
__all__ = ["__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
