"""The domain: stock positions, movements, reservations and their rules. Pure Python, no I/O.

Everything else (actors, persistence, gRPC, MQTT) depends on this package, never the reverse.
"""

from unistock.server.domain.errors import (
    Fenced,
    InsufficientStock,
    InvalidArgument,
    ReservationConflict,
    ReservationNotActive,
    ReservationNotFound,
    Shortfall,
    Unavailable,
    UnistockError,
)
from unistock.server.domain.position import MovementResult, Outcome, Position
from unistock.server.domain.reservation import (
    DEFAULT_TTL,
    LineProgress,
    Pickup,
    Reservation,
    ReservationKind,
    ReservationState,
    ReserveRequest,
    apply_movement,
    check_replay,
    fingerprint,
    fulfil,
    reconcile_holds,
    reserve,
)
from unistock.server.domain.values import (
    MAX_QUANTITY,
    AdjustmentSign,
    Line,
    Movement,
    MovementType,
    StockKey,
    check_id,
    validate_lines,
)

__all__ = [
    "DEFAULT_TTL",
    "MAX_QUANTITY",
    "AdjustmentSign",
    "Fenced",
    "InsufficientStock",
    "InvalidArgument",
    "Line",
    "LineProgress",
    "Movement",
    "MovementResult",
    "MovementType",
    "Outcome",
    "Pickup",
    "Position",
    "Reservation",
    "ReservationConflict",
    "ReservationKind",
    "ReservationNotActive",
    "ReservationNotFound",
    "ReservationState",
    "ReserveRequest",
    "Shortfall",
    "StockKey",
    "Unavailable",
    "UnistockError",
    "apply_movement",
    "check_id",
    "check_replay",
    "fingerprint",
    "fulfil",
    "reconcile_holds",
    "reserve",
    "validate_lines",
]
