"""Which store each location belongs to: master data first (a location's store_id, set with
AdminService.UpsertLocations or `unistock admin import`), then the server's --locations-file (a
CSV `location_id,store_id`, kept for deployments that have no master data yet).

A store may publish movements only for its own locations. When neither says, a store's only
location is the one with the store's own id (the usual one-location store).
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Callable


class LocationDirectory:
    """location_id -> store_id."""

    def __init__(self, owners: dict[str, str] | None = None) -> None:
        self._owners = dict(owners or {})
        #: Master data's store of a location (None: it does not say), consulted first, so a
        #: location's store set through the admin API takes effect at once.
        self.lookup: Callable[[str], str | None] | None = None

    @classmethod
    def from_csv(cls, path: pathlib.Path) -> LocationDirectory:
        """Read `location_id,store_id` rows (header required); errors name file and line."""
        owners: dict[str, str] = {}
        with path.open(newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None or [h.strip() for h in header[:2]] != ["location_id", "store_id"]:
                raise ValueError(f"{path}:1: expected the header 'location_id,store_id'")
            for n, row in enumerate(rows, 2):
                if not row or not row[0].strip():
                    continue
                if len(row) < 2 or not row[1].strip():
                    raise ValueError(f"{path}:{n}: expected 'location_id,store_id'")
                location, store = row[0].strip(), row[1].strip()
                if owners.get(location, store) != store:
                    raise ValueError(
                        f"{path}:{n}: location {location!r} already belongs to {owners[location]!r}"
                    )
                owners[location] = store
        return cls(owners)

    def store_of(self, location_id: str) -> str:
        """The store a location belongs to (by the rules above: its own id when nothing
        says)."""
        owner = self.lookup(location_id) if self.lookup is not None else None
        if owner is None:
            owner = self._owners.get(location_id)
        return location_id if owner is None else owner

    def belongs(self, location_id: str, store_id: str) -> bool:
        """Whether store_id may report movements at location_id."""
        return self.store_of(location_id) == store_id
