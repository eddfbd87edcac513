"""``amphora deploy``: a whole amphora stack from one file, in the spirit of Buildout.

``amphora.toml`` describes *parts* (``storage``, ``server``, ``follower``, ``kanban``);
``amphora deploy up`` installs the parts that changed, in dependency order, runs their
processes under supervisord and waits until each is ready. The modules, in the order a
deployment goes through them:

    schema      the file: typed settings, defaults, ``${part:key}`` references
    parts       the recipes: install, program, ready, uninstall of each kind of part
    state       what was installed (var/deploy/installed.json)
    supervisor  supervisord's configuration and control
    stack       the commands (up, status, logs, explain, down, destroy)
    systemd     equivalent systemd unit files
    cli         ``amphora deploy``
"""
from __future__ import annotations

from amphora.deploy.errors import ConfigError, DeployError, NotReadyError
from amphora.deploy.schema import Deployment, Part, load
from amphora.deploy.stack import Stack

__all__ = ["Stack", "Deployment", "Part", "load", "DeployError", "ConfigError",
           "NotReadyError"]
