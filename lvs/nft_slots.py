"""Slot tables for the nftables data plane's selection rules (pure): weighted round robin as an interleaved slot
sequence for ``numgen inc``, and Maglev lookup tables for ``jhash`` (``mh``), both folded into ``vmap`` ranges."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

WRR_MAX_SLOTS = 1024
MAGLEV_SIZES = (251, 1021)  # stable across destination changes (unless weights grow), so few clients move
MAGLEV_SPREAD = 10  # table slots per unit of (reduced) weight, at least


def reduced(weights: Sequence[int]) -> list[int]:
    """Weights divided by their greatest common divisor."""
    g = 0
    for w in weights:
        g = math.gcd(g, w)
    return [w // g for w in weights] if g else list(weights)


def scaled(weights: Sequence[int], limit: int) -> list[int]:
    """Weights (all > 0) reduced by their gcd, scaled down (keeping each >= 1) while their sum exceeds ``limit``."""
    ws = reduced(weights)
    total = sum(ws)
    if total > limit:  # floor(x) >= 1 only where x < 1, so the sum stays <= limit
        ws = reduced([max(1, w * (limit - len(ws)) // total) for w in ws])
    return ws


def interleaved_slots(weights: Sequence[int], limit: int = WRR_MAX_SLOTS) -> list[int]:
    """Smooth weighted round robin: one slot per turn, each holding the index of the chosen destination."""
    ws = scaled(weights, limit)
    current = [0] * len(ws)
    total = sum(ws)
    out = []
    for _ in range(total):
        for i, w in enumerate(ws):
            current[i] += w
        best = max(range(len(ws)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return out


def maglev_slots(names: Sequence[str], weights: Sequence[int]) -> list[int]:
    """A Maglev lookup table (each slot: a destination index), weighted by taking ``w`` turns a round.

    Removing or adding a destination moves few slots that belonged to the others, so most clients stay put.
    """
    size = MAGLEV_SIZES[-1]
    for m in MAGLEV_SIZES:
        if m >= MAGLEV_SPREAD * sum(reduced(weights)):
            size = m
            break
    ws = scaled(weights, size // MAGLEV_SPREAD)
    perms = []
    for name in names:
        digest = hashlib.blake2b(name.encode(), digest_size=16).digest()
        offset = int.from_bytes(digest[:8], "big") % size
        skip = int.from_bytes(digest[8:], "big") % (size - 1) + 1
        perms.append((offset, skip))
    table = [-1] * size
    nexts = [0] * len(names)
    filled = 0
    while filled < size:
        for i, (offset, skip) in enumerate(perms):
            for _ in range(ws[i]):
                while True:
                    slot = (offset + nexts[i] * skip) % size
                    nexts[i] += 1
                    if table[slot] < 0:
                        break
                table[slot] = i
                filled += 1
                if filled == size:
                    return table
    return table


def ranges(slots: Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs of equal values: (first, last, value)."""
    out: list[tuple[int, int, int]] = []
    for i, v in enumerate(slots):
        if out and out[-1][2] == v and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i, v)
        else:
            out.append((i, i, v))
    return out


def vmap(runs: Iterable[tuple[int, int, int]], targets: Sequence[str]) -> str:
    parts = [f"{a} : goto {targets[v]}" if a == b else f"{a}-{b} : goto {targets[v]}" for a, b, v in runs]
    return "{ " + ", ".join(parts) + " }"
