"""Choose and open a data-plane backend: ``auto`` (IPVS if the kernel has it, else nftables), ``ipvs``,
``nftables`` or ``memory``.

The IPVS and nftables backends are imported only when chosen, so a machine without pyroute2's IPVS support or without
``nft`` can still run ``lvs-ha plan`` with the memory backend. Every failure becomes ``BackendUnavailable`` with a
sentence saying what is missing.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from typing import Any

from lvs.dataplane import Dataplane, DataplaneError
from lvs.memory import MemoryDataplane

log = logging.getLogger(__name__)

KINDS = ("auto", "ipvs", "nftables", "memory")
MEMORY_FILE = "memory-dataplane.json"

# what lvs/ipvs.py and lvs/nft.py may call their backend (the first found is used)
_FACTORIES = {
    "ipvs": ("lvs.ipvs", ("open_dataplane", "IpvsDataplane", "IPVSDataplane", "IpvsBackend")),
    "nftables": ("lvs.nft", ("open_dataplane", "NftDataplane")),
}


class BackendUnavailable(DataplaneError):
    """The chosen backend cannot be opened here."""


def kernel_has_ipvs(proc: str = "/proc", sys_dir: str = "/sys", modules: str = "/lib/modules") -> bool:
    """True if IPVS is loaded, built in, or available as a module for the running kernel."""
    if os.path.exists(os.path.join(proc, "net", "ip_vs")) or os.path.isdir(os.path.join(sys_dir, "module", "ip_vs")):
        return True
    release = os.uname().release
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(modules, release, name), encoding="utf-8", errors="replace") as f:
                if any("/ip_vs.ko" in line for line in f):
                    return True
        except OSError:
            continue
    return False


def resolve_kind(kind: str) -> str:
    kind = getattr(kind, "value", kind)
    if kind not in KINDS:
        raise BackendUnavailable(f"unknown data plane {kind!r} (choose one of {', '.join(KINDS)})")
    if kind == "auto":
        return "ipvs" if kernel_has_ipvs() else "nftables"
    return kind


async def open_dataplane(kind: str, *, state_dir: str | None = None, **options: Any) -> Dataplane:
    """Open the backend. ``memory`` keeps its state in ``<state_dir>/memory-dataplane.json`` when a state_dir is
    given, so that one-shot commands see what an earlier one programmed."""
    chosen = resolve_kind(kind)
    if chosen == "memory":
        path = os.path.join(state_dir, MEMORY_FILE) if state_dir else None
        try:
            return MemoryDataplane(persist_path=path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackendUnavailable(f"memory data plane: cannot read {path}: {e}") from e
    module_name, names = _FACTORIES[chosen]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailable(f"the {chosen} backend is not available ({module_name}: {e})") from e
    factory = next((getattr(module, n) for n in names if hasattr(module, n)), None)
    if factory is None:
        raise BackendUnavailable(f"{module_name} has no backend entry point (expected one of {', '.join(names)})")
    available = getattr(factory, "available", None)
    if chosen == "nftables" and callable(available) and not available():
        raise BackendUnavailable("the nftables backend needs the `nft` command, which is not installed")
    try:
        if inspect.isclass(factory) and hasattr(factory, "open") and inspect.iscoroutinefunction(factory.open):
            dp = await factory.open(**options)
        else:
            dp = factory(**options)
            if inspect.isawaitable(dp):
                dp = await dp
    except DataplaneError as e:
        raise BackendUnavailable(f"cannot open the {chosen} backend: {e}") from e
    except (OSError, ImportError, RuntimeError, ValueError) as e:
        raise BackendUnavailable(f"cannot open the {chosen} backend: {type(e).__name__}: {e}") from e
    return dp  # type: ignore[no-any-return]
