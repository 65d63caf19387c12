"""Configuration: ``enmei.toml`` read into validated, frozen models (see ``model`` for the keys)."""

from enmei.config.load import LoadedConfig, check, load, load_text
from enmei.config.model import (
    Config,
    HttpProbe,
    LogProbe,
    ProcessProbe,
    ProcessUnit,
    SupervisorConfig,
    TcpProbe,
    UnitConfig,
    config_model,
    probe_name,
)
from enmei.config.qemu import QemuUnit

__all__ = [
    "Config",
    "HttpProbe",
    "LoadedConfig",
    "LogProbe",
    "ProcessProbe",
    "ProcessUnit",
    "QemuUnit",
    "SupervisorConfig",
    "TcpProbe",
    "UnitConfig",
    "check",
    "config_model",
    "load",
    "load_text",
    "probe_name",
]
