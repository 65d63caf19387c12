"""The keys of aging detection that the config reads, and the limits a unit gets when it names none.

Light on purpose (pydantic and the standard library only): the config imports it, and ``enmei check``
must not pay for numpy.

- :class:`AgingLimits` — the ``aging_limits`` table: the resources a unit can exhaust, each with its
  limit. Only the resources the probes report can be watched: ``rss_bytes`` and ``vms_bytes`` (sizes:
  a number of bytes or a string with a unit, ``"250MiB"``), ``num_fds`` and ``num_threads`` (counts);
  for VM units also the QEMU process's own ``qemu_private_bytes`` (a size), ``qemu_fds`` and
  ``qemu_threads`` (counts): the shipped policy answers their aging with ``rejuvenate_vmm`` (a fresh
  QEMU under the live guest), not with a restart of the guest.
  Any other key is a config error naming it (``rss`` → did you mean ``rss_bytes``?), like everywhere
  else in the file.
- :func:`min_buckets_problem` — why ``min_buckets`` buckets can never reach ``alpha`` (the smallest
  Mann–Kendall p-value of ``n`` buckets is :func:`enmei.detect.aging.min_p`), or None.
- :func:`default_limits` — what a unit can really reach when ``aging_limits`` is not given: its
  ``memory_max`` if it has one (the cgroup limit), else the machine's memory (``MemTotal``); as many
  open files as the soft ``RLIMIT_NOFILE`` it inherits from enmei.
"""

from __future__ import annotations

import math
import resource
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ByteSize, ConfigDict, Field, TypeAdapter

__all__ = ["DEFAULTS", "AgingLimits", "default_limits", "machine_memory_bytes", "memory_max_bytes",
           "min_buckets_problem", "open_files_limit"]


#: The defaults of the aging keys (``aging_KEY`` in ``[units.NAME.detect]``, ``KEY`` in an aging
#: ``[[units.NAME.detectors]]`` entry, the same keyword of :class:`enmei.detect.aging.TrendDetector`):
#: one place, so that what a unit runs and what the benchmark measures cannot drift apart.
DEFAULTS: dict[str, float] = {
    "bucket_s": 5.0, "alpha": 1e-3, "window": 24, "min_buckets": 8, "warmup_s": 10.0, "horizon_s": 86_400.0,
    "urgency": 0.5, "slope_ratio": 0.5, "hold_off_s": 1800.0,
}


class AgingLimits(BaseModel):
    """``aging_limits = { rss_bytes = "512MiB", num_fds = 1024 }``: the limit of each watched resource."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rss_bytes: ByteSize | None = Field(default=None, gt=0)
    vms_bytes: ByteSize | None = Field(default=None, gt=0)
    num_fds: int | None = Field(default=None, gt=0)
    num_threads: int | None = Field(default=None, gt=0)
    qemu_private_bytes: ByteSize | None = Field(default=None, gt=0)
    qemu_fds: int | None = Field(default=None, gt=0)
    qemu_threads: int | None = Field(default=None, gt=0)

    def as_dict(self) -> dict[str, float]:
        """The limits that are set, as floats by metric name."""
        return {k: float(v) for k, v in self.model_dump().items() if v is not None}


def _min_p(n: int) -> float:
    # The same formula as enmei.detect.aging.min_p (which imports numpy lazily, but its module is the
    # detector's: this one stays importable by the config alone).
    if n < 3:
        return 1.0
    s = n * (n - 1) / 2.0
    var = n * (n - 1) * (2 * n + 5) / 18.0
    return 0.5 * math.erfc((s - 1.0) / math.sqrt(var) / math.sqrt(2.0))


def min_buckets_problem(min_buckets: int, alpha: float, *, prefix: str = "aging_") -> str | None:
    """Why a verdict can never come from ``min_buckets`` buckets at significance ``alpha``, or None.

    >>> print(min_buckets_problem(6, 1e-3).replace("; ", ";\\n"))
    aging_min_buckets = 6 can never fire at aging_alpha = 0.001: the strongest trend 6 buckets can show has p = 0.0043;
    use aging_min_buckets >= 8 or aging_alpha >= 0.0043
    >>> min_buckets_problem(8, 1e-3) is None
    True
    """
    p = _min_p(min_buckets)
    if p <= alpha:
        return None
    need = next(n for n in range(min_buckets, 200) if _min_p(n) <= alpha)
    return (f"{prefix}min_buckets = {min_buckets} can never fire at {prefix}alpha = {alpha:g}: the strongest "
            f"trend {min_buckets} buckets can show has p = {p:.2g}; use {prefix}min_buckets >= {need} or "
            f"{prefix}alpha >= {p:.2g}")


def machine_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """``MemTotal`` in bytes, or None if it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def open_files_limit() -> float | None:
    """The soft ``RLIMIT_NOFILE`` a unit inherits from enmei, or None if unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else float(soft)


def memory_max_bytes(spec: Any) -> float | None:
    """A unit's ``memory_max`` in bytes (a number or a size string), or None when it has none."""
    raw = getattr(spec, "memory_max", None)
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = float(TypeAdapter(ByteSize).validate_python(raw)) if isinstance(raw, str) else float(raw)
    except (ValueError, TypeError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def default_limits(memory_max: float | None, *, machine: float | None = None,
                   nofile: float | None = None) -> dict[str, float]:
    """The limits of a unit that names none: ``rss_bytes`` (``memory_max``, else the machine's memory)
    and ``num_fds`` (the inherited soft ``RLIMIT_NOFILE``); a limit that cannot be known is left out."""
    out: dict[str, float] = {}
    memory = memory_max if memory_max is not None else (machine if machine is not None else machine_memory_bytes())
    if memory is not None:
        out["rss_bytes"] = memory
    files = nofile if nofile is not None else open_files_limit()
    if files is not None:
        out["num_fds"] = files
    return out


def limits_of(raw: Mapping[str, float] | AgingLimits | None) -> dict[str, float] | None:
    """Plain limits from an ``AgingLimits`` or a mapping (None stays None: use the defaults)."""
    if raw is None:
        return None
    if isinstance(raw, AgingLimits):
        return raw.as_dict()
    return {str(k): float(v) for k, v in raw.items()}
