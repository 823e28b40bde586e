"""The exception tree of Unistock; transports map it to status codes in one place.

UnistockError
├── InvalidArgument        a request field is missing or malformed (names the field)
├── InsufficientStock      a reservation line does not fit in `available`
├── ReservationConflict    a reservation_id (or fulfilment request_id) reused with other lines
├── ReservationNotFound    no reservation with that id
├── ReservationNotActive   the reservation has ended; the operation needs it ACTIVE
├── Unavailable            a dependency (Redis) is down or slow; safe to retry
└── Fenced                 another process owns the partition now; this one must stop
"""

from __future__ import annotations

from dataclasses import dataclass


class UnistockError(Exception):
    """Root of every error Unistock raises on purpose."""


class InvalidArgument(UnistockError):
    """A request field is missing or malformed."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A reservation line that did not fit, and by how much."""

    sku: str
    location_id: str
    requested: int
    available: int

    @property
    def shortfall(self) -> int:
        """Units missing for the line to fit."""
        return self.requested - self.available


class InsufficientStock(UnistockError):
    """One or more reservation lines do not fit; nothing was held."""

    def __init__(self, lines: list[Shortfall]) -> None:
        self.lines = lines
        detail = ", ".join(
            f"{s.sku}@{s.location_id}: requested {s.requested}, available {s.available}"
            for s in lines
        )
        super().__init__(f"insufficient stock: {detail}")


class ReservationConflict(UnistockError):
    """A reservation_id, or the request_id of a fulfilment or a transfer of held units
    (`operation`: "fulfilment" or "transfer"), was reused with different lines or moves."""

    def __init__(
        self, reservation_id: str, request_id: str = "", operation: str = "fulfilment"
    ) -> None:
        self.reservation_id = reservation_id
        self.request_id = request_id
        if request_id:
            message = (
                f"request_id {request_id!r} was already used on reservation {reservation_id!r} "
                f"with other {'moves' if operation == 'transfer' else 'lines'}; use a new "
                f"request_id for another {operation}"
            )
        else:
            message = (
                f"reservation_id {reservation_id!r} already exists with other lines; "
                "use a new id for a different reservation"
            )
        super().__init__(message)


class ReservationNotFound(UnistockError):
    """No reservation has that id."""

    def __init__(self, reservation_id: str) -> None:
        self.reservation_id = reservation_id
        super().__init__(f"reservation {reservation_id!r} not found")


class ReservationNotActive(UnistockError):
    """The operation needs an ACTIVE reservation and this one has ended."""

    def __init__(self, reservation_id: str, state: str, operation: str) -> None:
        self.reservation_id = reservation_id
        self.state = state
        super().__init__(f"cannot {operation} reservation {reservation_id!r}: it is {state}")


class NetworkNotFound(UnistockError):
    """No network of that id in master data."""

    def __init__(self, network: str) -> None:
        super().__init__(f"network {network!r} not found (see AdminService.UpsertNetworks)")
        self.network = network


class EventsDiscarded(UnistockError):
    """A subscriber asked for events after an id whose successors were already discarded
    (retention): resuming there would skip some silently."""

    def __init__(self, after_event_id: str) -> None:
        super().__init__(
            f"events after {after_event_id!r} were discarded (older than the events' retention);"
            " resume from now (no after_event_id) and reconcile with GetAvailability"
        )
        self.after_event_id = after_event_id


class Unavailable(UnistockError):
    """A dependency is down or too slow; the outcome is unknown (the change may still become
    durable when the dependency is back). Retry with the same ids: every write is idempotent."""


class Fenced(UnistockError):
    """Another process took over a partition this process was writing; it must stop serving."""
