"""udpflannel: a flannel-compatible overlay network agent with a fast batched UDP data path."""

__version__ = "0.1.0"
