"""The actor runtime: one in-memory writer per stock position, activated from Redis on demand."""

from unistock.server.actors.directory import Directory
from unistock.server.actors.inventory import BatchResult, Inventory, PickupMismatch
from unistock.server.actors.reservations import ReservationBook

__all__ = ["BatchResult", "Directory", "Inventory", "PickupMismatch", "ReservationBook"]
