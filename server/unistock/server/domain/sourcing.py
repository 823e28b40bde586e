"""Sourcing (domain.md "Availability for a channel", FindStock): which locations should serve an
order. Pure: the caller gives the candidates (locations offering the mode within the distance
asked, each marked stale or not) and what each has available.

Ranking: fresh locations before stale ones (a stale store's stock is older news than its network
accepts: the caller leaves stale locations out, or passes them to be offered last), then the
locations that can serve every line alone first (one parcel, one pickup), then by distance, then
by stock depth: the smallest spare (available - wanted) over the lines, more first, so a store's
last unit is the last choice. A split is the fewest locations that together
cover the order, found greedily (fresh locations first, then most units still wanted, then the
ranking).

Two ways in, one ranking: `rank` over candidates and a lookup of what each has (a few
candidates: network lines), and `Table` over arrays (FindStock: hundreds of candidates per
order, whose per-candidate Python work was the cost; numpy does it per array instead).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class Candidate:
    """A location that may serve: its distance from the customer (km; None: unknown), and
    whether its store is stale (ranked after every fresh location)."""

    location_id: str
    distance_km: float | None
    stale: bool = False


@dataclass(frozen=True, slots=True)
class Option:
    """What a location can serve of the order: (sku, units) per line it has any of."""

    location_id: str
    distance_km: float | None
    lines: tuple[tuple[str, int], ...]
    covers_all: bool
    #: min over the order's lines of (available - wanted): how much it has to spare
    depth: int
    #: its store is stale (offered after every fresh location)
    stale: bool = False


def rank(
    lines: Sequence[tuple[str, int]],
    candidates: Sequence[Candidate],
    available: Callable[[str, str], int],
    limit: int | None = None,
) -> list[Option]:
    """The candidates that have any unit of the order, ranked (see the module docstring): all
    of them, or the best `limit`. available(sku, location_id) is what the location may promise
    now."""
    inf = float("inf")
    keyed = []
    for c in candidates:
        units = [available(sku, c.location_id) for sku, _ in lines]
        if not any(units):
            continue
        covers = all(u >= want for u, (_, want) in zip(units, lines, strict=True))
        depth = min(u - want for u, (_, want) in zip(units, lines, strict=True))
        distance = c.distance_km if c.distance_km is not None else inf
        keyed.append(
            ((c.stale, not covers, distance, -depth, c.location_id), c, units, covers, depth)
        )
    best = sorted(keyed) if limit is None else heapq.nsmallest(limit, keyed)
    return [
        Option(
            c.location_id,
            c.distance_km,
            tuple((sku, min(want, u)) for u, (sku, want) in zip(units, lines, strict=True) if u),
            covers_all=covers,
            depth=depth,
            stale=c.stale,
        )
        for _, c, units, covers, depth in best
    ]


class Table:
    """What candidate locations have of an order, as arrays over the locations (columns), ranked
    as `rank` ranks the same candidates.

    lines: the order, (sku, units wanted) per line (distinct SKUs).
    ids: location id per column, in increasing order (the last tie-break is the column).
    units: int64 (len(lines), len(ids)): what each location may promise now of each line,
    0 where it has none; a column that is not a candidate (another mode, beyond the distance
    asked) has 0 everywhere, so it is never offered.
    distance_km: float64 (len(ids),), km from the customer, NaN where unknown (ranked as
    infinitely far; Option.distance_km None).
    stale: bool (len(ids),), the location's store is stale (ranked after every fresh one).
    """

    def __init__(
        self,
        lines: Sequence[tuple[str, int]],
        ids: Sequence[str],
        units: NDArray[np.int64],
        distance_km: NDArray[np.float64],
        stale: NDArray[np.bool_],
    ) -> None:
        self.lines = lines
        self.ids = ids
        self.units = units
        self.distance_km = distance_km
        self.stale = stale
        want = np.fromiter((q for _, q in lines), np.int64, len(lines))[:, None]
        #: columns with some unit of the order (the only ones offered), in column order
        self.holders: NDArray[np.intp] = np.flatnonzero((units > 0).any(axis=0))
        held = units[:, self.holders]
        #: per holder: it can serve every line alone
        self.covers: NDArray[np.bool_] = np.asarray((held >= want).all(axis=0))
        #: per holder: min over the lines of (available - wanted)
        self.depth: NDArray[np.int64] = (held - want).min(axis=0)

    def any_covers(self) -> bool:
        """Whether some location (fresh or stale) can serve every line alone."""
        return bool(self.covers.any())

    def ranked(self, limit: int | None = None) -> list[Option]:
        """The holders ranked (see the module docstring): all of them, or the best `limit`."""
        cols = self.holders
        distance = self.distance_km[cols]
        far = np.where(np.isnan(distance), np.inf, distance)
        # np.lexsort: the last key is the first compared.
        order = np.lexsort((cols, -self.depth, far, ~self.covers, self.stale[cols]))
        if limit is not None:
            order = order[:limit]
        lines, ids = self.lines, self.ids
        out = []
        for col, covers, depth, km, stale in zip(
            cols[order].tolist(),
            self.covers[order].tolist(),
            self.depth[order].tolist(),
            distance[order].tolist(),
            self.stale[cols[order]].tolist(),
            strict=True,
        ):
            units = self.units[:, col].tolist()
            out.append(
                Option(
                    ids[col],
                    None if math.isnan(km) else km,
                    tuple(
                        (sku, min(want, u))
                        for u, (sku, want) in zip(units, lines, strict=True)
                        if u
                    ),
                    covers_all=covers,
                    depth=depth,
                    stale=stale,
                )
            )
        return out


def split(lines: Sequence[tuple[str, int]], ranked: Sequence[Option]) -> tuple[list[Option], bool]:
    """The fewest locations (greedily) that together cover the order, each with the units
    assigned to it, and whether they cover every line. A stale location is taken only for what
    the fresh ones cannot cover."""
    wanted = dict(lines)
    plan: list[Option] = []
    pool = list(ranked)
    while any(wanted.values()) and pool:
        best, best_key = None, (False, 0)
        for o in pool:  # fresh first; ranked order breaks ties: nearer and deeper first
            units = sum(min(wanted.get(sku, 0), n) for sku, n in o.lines)
            if units and (not o.stale, units) > best_key:
                best, best_key = o, (not o.stale, units)
        if best is None:
            break
        pool.remove(best)
        assigned = []
        for sku, n in best.lines:
            take = min(wanted.get(sku, 0), n)
            if take:
                assigned.append((sku, take))
                wanted[sku] -= take
        plan.append(
            Option(
                best.location_id,
                best.distance_km,
                tuple(assigned),
                False,
                best.depth,
                best.stale,
            )
        )
    return plan, not any(wanted.values())
