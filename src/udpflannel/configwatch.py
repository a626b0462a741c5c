"""The config watcher: the network config is read once, at start (as flanneld does); this says
when <prefix>/config no longer holds what the agent runs with.

What `ConfigWatch.run()` (the supervised task "config") promises: every `every` seconds it
reads the config and, once per new value, logs a warning that names it -- changed (restart
udpflannel to apply it), invalid (with the reason) or deleted -- and an INFO line when the
one in use is back. It never applies a change, never stops the agent, and says nothing of
etcd trouble (the other tasks report that). flanneld ignores such a change silently.
What it calls: Registry.get_config() and core.config.parse_config().
What it owns: nothing beyond the last value it has seen (a restarted task starts again from
the one in use). It logs as the agent (logger "udpflannel.agent").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from .core.config import NetworkConfig, parse_config
from .core.decode import printable
from .core.registry import Registry
from .errors import ConfigError, RegistryError

log = logging.getLogger("udpflannel.agent")


class ConfigWatch:
    def __init__(self, registry: Registry, config: NetworkConfig, every: float):
        self.registry = registry
        self.config = config  # the one in use
        self.every = every

    async def run(self) -> None:
        key = self.registry.config_key.decode()
        seen: Optional[bytes] = self.config.raw.encode()
        while True:
            await asyncio.sleep(self.every)
            try:
                raw = await self.registry.get_config()
            except RegistryError:
                continue  # the other tasks report etcd trouble
            if raw == seen:
                continue
            seen = raw
            if raw is None:
                log.warning("the network config at %s was deleted; going on with the one this agent started with",
                            key)  # fmt: skip
                continue
            try:
                new = parse_config(raw)
            except ConfigError as e:
                log.warning("the network config at %s changed and the new one is invalid (%s); going on with the "
                            "one this agent started with", key, e)  # fmt: skip
                continue
            if new == self.config:
                log.info("the network config at %s is again the one in use", key)
            else:
                log.warning("the network config at %s changed (now %s): restart udpflannel to apply it; until then "
                            "it goes on with the one it started with", key, printable(new.raw.strip(), 4000))  # fmt: skip
