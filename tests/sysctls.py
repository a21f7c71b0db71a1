"""Kernel settings in a dictionary, for the units that read and write sysctls through two functions
(``ha.sysctl_keeper``, ``ha.via_kernel``): ``read`` raises FileNotFoundError for a name the kernel would not have,
``writes`` lists every write in order."""

from __future__ import annotations


class FakeSysctls:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.writes: list[tuple[str, str]] = []

    def read(self, name: str) -> str:
        if name not in self.values:
            raise FileNotFoundError(name)
        return self.values[name]

    def write(self, name: str, value: str) -> None:
        self.writes.append((name, value))
        self.values[name] = value
