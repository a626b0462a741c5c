"""`python -m udpflannel.lab`: the lab command on its own."""

from .command import lab

lab()
