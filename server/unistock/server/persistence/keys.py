"""The Redis key layout, partitioned from day one.

Every key carries a hash tag `{p<n>}` naming its partition, so all keys of a partition live in
one Redis Cluster slot and one script call can write them atomically. Positions are partitioned
by location (crc32 of location_id), reservations by crc32 of reservation_id. A process owns a
set of partitions; each partition has an owner epoch that every write checks (the fence).

    us:meta                       hash: layout version, partition count
    us:{p<n>}:epoch               owner epoch (INCR on takeover)
    us:{p<n>}:pos                 hash: "<location_id>|<sku>" -> encoded position
    us:{p<n>}:holds:<loc>|<sku>   hash: reservation id -> "units" or "units/shipped": the
                                  holds on one position, kept apart from it so that a write
                                  of the position carries only the holds that changed
    us:{p<n>}:locs                set: location ids with positions in this partition
    us:{p<n>}:res:<reservation>   encoded reservation record (terminal ones expire)
    us:{p<n>}:exp                 sorted set: ACTIVE reservation id -> expiry (ms since epoch)
    us:{p<n>}:rix:<s>:c:<cust>    sorted sets, the reservation indexes (partition of the
    us:{p<n>}:rix:<s>:ch:<chan>   reservation): the records in state <s> (1 ACTIVE, 2 FULFILLED,
    us:{p<n>}:rix:<s>:l:<loc>     3 RELEASED, 4 EXPIRED) of a customer, a channel, a location
                                  (one per line's location). Every score is 0 and a member is
                                  "<created ms, 13 digits>|<reservation_id>": lexicographic
                                  order is (created, id), stable paging with ZRANGE BYLEX.
                                  Written by the flush script with the record
    us:{p<n>}:rixt                hash: reservation id -> the index entries of its terminal
                                  record ("<member>\n<index key>\n..."), to remove them once
                                  the record's retention ran out
    us:{p<n>}:rixdrop             sorted set: terminal reservation id -> when its record's
                                  retention runs out (ms since epoch): swept by the expiry loop
    us:{p<n>}:src                 hash: source id -> highest contiguous durable seq (MQTT acks)
    us:{p<n>}:marks               hash: "<location_id>|<sku>|<source_id>" -> seq (spilled marks)
    us:{p<n>}:srchi               hash: source id -> highest seq applied from it, anywhere
    us:{p<n>}:srcown              hash: source id -> the store it belongs to (MQTT: the first
                                  store that sent it; never changed)
    us:{p<n>}:xfer:<dest>|<id>    encoded transfer record at its destination (partition of the
                                  destination location)
    us:{p<n>}:xdest:<id>          set: the destinations with a record of transfer <id>
                                  (partition of the transfer id)
    us:{p<n>}:xout                hash: "<source_id>|<seq>" -> encoded Shipment, the
                                  TRANSFER_OUTs of this partition's positions not yet applied to
                                  their transfer record (the partitions' outbox)
    us:{p<n>}:feed                stream: the change feed of the partition (entry "e" = a
                                  FeedBatch: the changes one flush made durable here)
    us:{p<n>}:feedcur             hash: durable feed consumer -> the last feed id it has (the
                                  feed is trimmed behind the slowest)
    us:{p<n>}:heard               hash: store id -> when its agent was last heard from (Unix
                                  seconds; partition of the store id): store liveness
    us:{p<n>}:storestat           hash: store id -> its last published status (codec.
                                  store_status_value: revision, online or not), written with
                                  its STORE_OFFLINE / STORE_ONLINE feed change
    us:{p<n>}:netstat             hash: "<network>|<sku>" -> the last published stock class of
                                  that network level (codec.network_level_value: revision,
                                  class), written with its NETWORK_* feed change (partition of
                                  "<network>|<sku>": network_level_partition)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from unistock.server.domain import StockKey

LAYOUT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Names every key; partitions is fixed when a keyspace is first created."""

    prefix: str = "us"
    partitions: int = 64

    @property
    def meta(self) -> str:
        """Layout description, checked at start-up."""
        return f"{self.prefix}:meta"

    def location_partition(self, location_id: str) -> int:
        """The partition owning a location's positions."""
        return zlib.crc32(location_id.encode()) % self.partitions

    def reservation_partition(self, reservation_id: str) -> int:
        """The partition owning a reservation's record."""
        return zlib.crc32(reservation_id.encode()) % self.partitions

    def transfer_partition(self, transfer_id: str) -> int:
        """The partition owning a transfer's index (its records live with their destination)."""
        return zlib.crc32(transfer_id.encode()) % self.partitions

    def transfer(self, destination: str, transfer_id: str) -> str:
        """Key of a transfer's record at its destination."""
        tag = self._tag(self.location_partition(destination))
        return f"{tag}:xfer:{destination}|{transfer_id}"

    def transfer_index(self, transfer_id: str) -> str:
        """Set of the destinations holding a record of a transfer."""
        return f"{self._tag(self.transfer_partition(transfer_id))}:xdest:{transfer_id}"

    def shipments(self, partition: int) -> str:
        """Hash of a partition's shipments not yet applied to their transfer record."""
        return f"{self._tag(partition)}:xout"

    def store_partition(self, store_id: str) -> int:
        """Partition of a store's liveness."""
        return zlib.crc32(store_id.encode()) % self.partitions

    def network_level_partition(self, network: str, sku: str) -> int:
        """Partition of a network level's published stock class (NETWORK_* events): spread by
        (network, SKU), not by network, so that a busy network is not one hot partition."""
        return zlib.crc32(f"{network}|{sku}".encode()) % self.partitions

    def network_status(self, partition: int) -> str:
        """Hash of the network levels' last published stock classes."""
        return f"{self._tag(partition)}:netstat"

    def feed(self, partition: int) -> str:
        """Stream of the partition's durable changes (the change feed)."""
        return f"{self._tag(partition)}:feed"

    def feed_cursors(self, partition: int) -> str:
        """Hash of the durable feed consumers' cursors."""
        return f"{self._tag(partition)}:feedcur"

    def events(self, partition: int) -> str:
        """Stream of the partition's events (actors.events: derived from the feed)."""
        return f"{self._tag(partition)}:events"

    def events_floor(self, partition: int) -> str:
        """The highest event id trimmed from the partition's events stream (persistence.events)."""
        return f"{self._tag(partition)}:evfloor"

    def heard(self, partition: int) -> str:
        """Hash of the stores' last-heard times (store liveness)."""
        return f"{self._tag(partition)}:heard"

    def store_status(self, partition: int) -> str:
        """Hash of the stores' last published statuses (partition of the store id)."""
        return f"{self._tag(partition)}:storestat"

    def source_partition(self, source_id: str) -> int:
        """The partition owning a movement source's progress."""
        return zlib.crc32(source_id.encode()) % self.partitions

    def _tag(self, partition: int) -> str:
        return f"{self.prefix}:{{p{partition}}}"

    def epoch(self, partition: int) -> str:
        """Owner epoch of a partition."""
        return f"{self._tag(partition)}:epoch"

    def positions(self, partition: int) -> str:
        """Hash of a partition's positions."""
        return f"{self._tag(partition)}:pos"

    def holds(self, key: StockKey) -> str:
        """Hash of the holds on one position (in the position's partition)."""
        return f"{self._tag(self.location_partition(key[1]))}:holds:{position_field(key)}"

    def locations(self, partition: int) -> str:
        """Set of the location ids stored in a partition."""
        return f"{self._tag(partition)}:locs"

    def reservation(self, partition: int, reservation_id: str) -> str:
        """Key of one reservation record."""
        return f"{self._tag(partition)}:res:{reservation_id}"

    def sources(self, partition: int) -> str:
        """Hash of the sources' highest contiguous durable seq."""
        return f"{self._tag(partition)}:src"

    def spilled_marks(self, partition: int) -> str:
        """Hash of the source marks positions keep outside themselves (see Position.spill)."""
        return f"{self._tag(partition)}:marks"

    def source_highs(self, partition: int) -> str:
        """Hash of the sources' highest seq applied anywhere (bounds seq jumps)."""
        return f"{self._tag(partition)}:srchi"

    def source_owners(self, partition: int) -> str:
        """Hash of the store each source belongs to (claimed by its first MQTT batch)."""
        return f"{self._tag(partition)}:srcown"

    def reservation_index(self, partition: int, state: int, dimension: str, value: str) -> str:
        """Sorted set of the records in state `state` with value for dimension "c" (customer),
        "ch" (channel) or "l" (a line's location), in the reservations' partition."""
        return f"{self._tag(partition)}:rix:{state}:{dimension}:{value}"

    def index_terminal(self, partition: int) -> str:
        """Hash of the index entries of a partition's terminal records."""
        return f"{self._tag(partition)}:rixt"

    def index_drops(self, partition: int) -> str:
        """Sorted set of a partition's terminal records by the end of their retention (ms)."""
        return f"{self._tag(partition)}:rixdrop"

    def expiries(self, partition: int) -> str:
        """Sorted set of a partition's ACTIVE reservations by expiry."""
        return f"{self._tag(partition)}:exp"


def position_field(key: StockKey) -> str:
    """The hash field of a position: location first, so one location's fields share a prefix."""
    return f"{key[1]}|{key[0]}"


def mark_field(key: StockKey, source_id: str) -> str:
    """The spilled-marks hash field of a source's mark on a position."""
    return f"{key[1]}|{key[0]}|{source_id}"


def parse_position_field(field: str) -> StockKey:
    """The (sku, location_id) of a hash field."""
    location_id, _, sku = field.partition("|")
    return (sku, location_id)
