"""Errors of ``amphora deploy``::

    AmphoraError
     +-- DeployError               a deployment cannot do what was asked
          +-- ConfigError          amphora.toml is wrong (names the file and line)
          +-- NotReadyError        a part did not become ready in time (carries its last
                                   log lines)
"""
from __future__ import annotations

from amphora.errors import AmphoraError

__all__ = ["DeployError", "ConfigError", "NotReadyError"]


class DeployError(AmphoraError):
    """A deployment cannot do what was asked."""


class ConfigError(DeployError):
    """The deployment file is wrong; the message names the file and line."""


class NotReadyError(DeployError):
    """A part did not become ready in time; the message ends with its last log lines."""
