"""The control plane's exceptions. The CLI is the only place that turns them into exit codes."""


class UdpFlannelError(Exception):
    """Base class of every error udpflannel raises on purpose."""


class ConfigError(UdpFlannelError):
    """A network config (or backend option) that cannot be used. Names the key and the value."""

    def __init__(self, key: str, value: object, reason: str):
        self.key = key
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 200:  # a value may be up to 64 KiB (core.decode): the log gets its start
            shown = f"{shown[:200]}... ({len(shown)} characters)"
        super().__init__(f"invalid network config: {key}={shown}: {reason}")


class LeaseParseError(UdpFlannelError):
    """A key or value under <prefix>/subnets that is not a flannel lease."""


class RegistryError(UdpFlannelError):
    """etcd could not be reached or answered with an error (always retried by the caller)."""


class OutOfSubnets(UdpFlannelError):
    """No free subnet is left between SubnetMin and SubnetMax."""


class InterfaceError(UdpFlannelError):
    """No usable external interface (or public IP) could be found."""


class BackendError(UdpFlannelError):
    """A backend could not set up its devices or routes."""


class FatalError(UdpFlannelError):
    """A local problem no retry can fix (no TUN, no privileges, no iptables, an unwritable
    subnet file): the agent stops and the CLI exits non-zero with this message."""


class Rejected(UdpFlannelError):
    """Bytes read from etcd that core.decode refuses (not UTF-8, not JSON, too deep, too
    big, ...). The message is the reason; callers wrap it in LeaseParseError/ConfigError."""
