"""RFID count sessions: from raw tag reads to the per-SKU quantities of a ``COUNT`` movement.

The domain rule (docs: domain.md, "Counts and the movements around them"): a store's edge agent
puts every movement of its store, and its counts, into one ordered stream, and a ``COUNT`` states
what the shelf held *at its position in that stream*. For an RFID count that is

    the distinct EPCs read for the SKU during the session,
    minus those whose sale was recorded during the session where the sale names the EPC.

How the edge agent uses this module:

1. Start a :class:`CountSession` when the handheld or the fixed readers start counting.
2. Feed every tag read to :meth:`CountSession.read` and every sale the agent records while the
   session is open to :meth:`CountSession.sale_recorded`. Those sales go into the stream *before*
   the ``COUNT`` (the count is emitted at stop), so the count supersedes them and must already be
   net of them.
3. :meth:`CountSession.stop` gives one :class:`CountResult` per SKU; the agent appends one
   ``COUNT`` movement per result, all carrying the session's ``count_id``, at that point of its
   stream. Movements the agent receives after that apply on top of the count…
4. …except a movement that *happened* before the count started but reached the agent only after
   the count was emitted (a till that was offline from the agent): the count already reflects it,
   so the agent sets its ``count_id`` and the server records it as a correction of the count's
   variance only, without changing ``on_hand`` a second time.

Which count a late movement is marked with (domain invariant 7) is decided by :class:`CountMarks`
alone, from :class:`CountCover`\\ s: one per ``COUNT`` the agent put in its stream (a count covers
the SKUs it emitted a ``COUNT`` for, at its location, and nothing else: a count of TEE says
nothing about CAP, and a count of "every SKU read" covers only the SKUs it read). A movement is
marked with the latest count in the stream that covered its SKU at its location, if it happened
before that count started, or not at all. The server only corrects a count it applied to that
very position, so a movement marked with another count would be applied a second time; and
``on_hand`` rests on the position's latest ``COUNT``, so that count alone decides whether the
movement is already in it (two overlapping counts: a sale after the start of the one emitted
last is not in it, even if it came before the start of the other).

Times are never used to decide whether a read counts: reader clocks drift and a handheld may be an
hour off. Order is arrival order at the agent. The only time comparison is whether a movement
happened before a count started (:func:`precedes_count`, :meth:`CountMarks.mark`), between two
timestamps that must be on the same (the agent's) clock.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from unistock.edge.epc import EpcError, decode_sgtin96

__all__ = [
    "KEEP_PER_POSITION",
    "CountCover",
    "CountMarks",
    "CountResult",
    "CountSession",
    "ReadOutcome",
    "SkuLookup",
    "on_agent_clock",
    "precedes_count",
]


class SkuLookup(Protocol):
    """What a count session needs from the catalogue (:class:`unistock.edge.catalogue.Catalogue`)."""

    def sku_for(self, gtin14: str) -> str | None:
        """The SKU of a GTIN-14, or ``None`` if unknown."""
        ...


class ReadOutcome(enum.Enum):
    """What one tag read did to the session (returned by :meth:`CountSession.read`)."""

    COUNTED = "counted"
    """First read of this EPC, for an SKU in scope: it is now part of the count."""
    DUPLICATE = "duplicate"
    """The EPC was already counted; a tag read 50 times counts once."""
    BAD = "bad"
    """Not a decodable SGTIN-96 (another EPC scheme, corrupt read)."""
    UNKNOWN = "unknown"
    """A valid SGTIN whose GTIN the catalogue does not list."""
    OUT_OF_SCOPE = "out_of_scope"
    """A known SKU that this session does not count."""
    LATE = "late"
    """Arrived after :meth:`CountSession.stop`; the count is already fixed."""


@dataclass(frozen=True, slots=True)
class CountResult:
    """The counted quantity of one SKU at the session's location.

    Attributes:
        sku: the SKU.
        quantity: units on the shelf at the count's position in the stream; always
            ``len(distinct_epcs)``.
        distinct_epcs: the EPCs (upper-case hex) that make up ``quantity``: read during the
            session and not named by a sale recorded during it. Kept for audit (which tags were
            on the shelf) and for the next count's comparison.
    """

    sku: str
    quantity: int
    distinct_epcs: frozenset[str]


@dataclass(frozen=True, slots=True)
class CountCover:
    """One ``COUNT`` the agent put in its stream: the count ``count_id`` covered ``sku`` at
    ``location_id``. A count covers exactly the positions it emitted a ``COUNT`` for."""

    location_id: str
    sku: str
    count_id: str
    started_at: datetime
    """When the count started, timezone-aware, on the agent's clock: what happened before it is
    reflected in it."""


class CountSession:
    """One RFID count of one location: collects reads and in-session sales, then yields results.

    Not thread-safe: like a stock position, a session is fed by one task of the edge agent.
    """

    def __init__(
        self,
        count_id: str,
        location_id: str,
        scope_skus: frozenset[str] | None,
        started_at: datetime,
        *,
        catalogue: SkuLookup,
    ) -> None:
        """Open a session.

        Args:
            count_id: identifies the count; every ``COUNT`` movement from this session carries it,
                which is what lets the server ignore the same count sent twice.
            location_id: the location counted.
            scope_skus: the SKUs counted. Each gets a result, 0 if none of its tags was read
                (which is how a count records "the shelf is empty"). ``None`` counts every SKU
                seen; an SKU with no read tag then gets no result, since nothing says it was
                looked for.
            started_at: when the session started, timezone-aware, on the agent's clock; used only
                to tell which movements happened before the count (:meth:`CountMarks.mark`).
            catalogue: GTIN-14 → SKU lookup.

        Raises:
            ValueError: empty ``count_id`` or ``location_id``, or a naive ``started_at``.
        """
        if not count_id:
            raise ValueError("count_id must not be empty")
        if not location_id:
            raise ValueError("location_id must not be empty")
        # A naive time compared with an aware one raises later, in the middle of replaying a
        # till's backlog; reject it where the mistake is made.
        _require_aware("started_at", started_at)
        self.count_id = count_id
        self.location_id = location_id
        self.scope_skus = scope_skus
        self.started_at = started_at
        self._catalogue = catalogue

        # EPC → SKU for every EPC counted so far (in scope, decodable, known). Sets per SKU are
        # built at stop; keeping one dict makes the duplicate check a single lookup per read.
        self._counted: dict[str, str] = {}
        # EPCs already classified as not countable, so that a tag read many times is decoded and
        # looked up once.
        self._ignored: dict[str, ReadOutcome] = {}
        self._sold: set[str] = set()
        self._results: tuple[CountResult, ...] | None = None

        self._outcomes: Counter[ReadOutcome] = Counter()
        self._reads_by_antenna: Counter[tuple[str, int]] = Counter()
        self._unknown_gtins: set[str] = set()
        self._sales_without_epc = 0
        self.last_read_at: datetime | None = None
        """``at`` of the latest read to arrive (arrival order), for diagnostics only."""

    @classmethod
    def restore(
        cls,
        count_id: str,
        location_id: str,
        scope_skus: frozenset[str] | None,
        started_at: datetime,
        *,
        catalogue: SkuLookup,
        counted: Mapping[str, str],
        sold: Iterable[str] = (),
        sales_without_epc: int = 0,
        stopped: bool = False,
    ) -> CountSession:
        """A session rebuilt from what was kept of it (the edge agent's count store).

        Args:
            counted: EPC → SKU of every EPC counted so far (:meth:`counted_sku`), as classified
                when it was read: a catalogue changed since does not reclassify it.
            sold: the EPCs named by sales recorded during the session (:meth:`sale_recorded`).
            sales_without_epc: :attr:`sales_without_epc` so far.
            stopped: whether the session was stopped; its results are then fixed again from the
                same counted and sold EPCs, so they equal the original ones.

        The read diagnostics (:attr:`total_reads`, :attr:`reads_by_antenna`, …) start from zero:
        they describe what this session object saw.
        """
        session = cls(count_id, location_id, scope_skus, started_at, catalogue=catalogue)
        session._counted.update((epc.upper(), sku) for epc, sku in counted.items())
        session._sold.update(epc.upper() for epc in sold)
        session._sales_without_epc = sales_without_epc
        if stopped:
            session.stop()
        return session

    # -- input -----------------------------------------------------------------------------------

    def read(self, epc_hex: str, reader_id: str, antenna: int, at: datetime) -> ReadOutcome:
        """Record one tag read.

        Undecodable EPCs and GTINs the catalogue does not know are tallied (:attr:`bad_reads`,
        :attr:`unknown_reads`), not raised: a shelf always holds some foreign or damaged tags and
        they must not stop the count.

        ``at`` (the reader's timestamp) is kept for diagnostics but never decides whether the read
        counts: reader clocks can be hours off, and everything read while the session is open is
        on the shelf at the session's position in the stream.
        """
        self._reads_by_antenna[(reader_id, antenna)] += 1
        self.last_read_at = at
        outcome = self._classify(epc_hex.upper())
        self._outcomes[outcome] += 1
        return outcome

    def _classify(self, epc: str) -> ReadOutcome:
        if self._results is not None:
            return ReadOutcome.LATE
        if epc in self._counted:
            return ReadOutcome.DUPLICATE
        cached = self._ignored.get(epc)
        if cached is not None:
            return cached
        outcome = self._first_read(epc)
        if outcome is not ReadOutcome.COUNTED:
            self._ignored[epc] = outcome
        return outcome

    def _first_read(self, epc: str) -> ReadOutcome:
        try:
            gtin14 = decode_sgtin96(epc).gtin14
        except EpcError:
            return ReadOutcome.BAD
        sku = self._catalogue.sku_for(gtin14)
        if sku is None:
            self._unknown_gtins.add(gtin14)
            return ReadOutcome.UNKNOWN
        if self.scope_skus is not None and sku not in self.scope_skus:
            return ReadOutcome.OUT_OF_SCOPE
        self._counted[epc] = sku
        return ReadOutcome.COUNTED

    def sale_recorded(self, sku: str, epcs: Iterable[str]) -> None:
        """Note a sale the agent recorded (put in its stream) while the session was open.

        Such a sale precedes the ``COUNT`` in the stream, so the count must be net of it:

        * An EPC the sale names provably left the shelf; it is not counted, whether it was read
          before the sale, after it (a reader near the till), or not at all.
        * A sale that names no EPC does **not** reduce the count. The unit may already have been
          read (then the count is one too high) or not yet (then it was never in the count, and
          subtracting would make it one too low); nothing tells which. The count is what was
          physically read minus what provably left; an error stays visible as variance at the
          next count instead of being guessed away. :attr:`sales_without_epc` says how many such
          sales there were.

        The EPC is excluded whatever ``sku`` says: the tag identifies the item, the till's SKU
        is a label. A sale recorded after :meth:`stop` follows the ``COUNT`` in the stream and
        applies on top of it, so it is ignored here.
        """
        if self._results is not None:
            return
        named = [epc.upper() for epc in epcs]
        if not named:
            self._sales_without_epc += 1
        self._sold.update(named)

    # -- output ----------------------------------------------------------------------------------

    def stop(self) -> list[CountResult]:
        """Close the session and return one result per SKU, sorted by SKU.

        Idempotent: a second call (e.g. the agent resending the count after a crash) returns equal
        results, and reads or sales arriving in between change nothing. The results carry no
        ``count_id`` of their own; the agent stamps the session's on every ``COUNT`` it emits.
        """
        if self._results is None:
            epcs_by_sku: dict[str, set[str]] = {}
            for epc, sku in self._counted.items():
                # setdefault even for a sold EPC: an SKU seen only through since-sold tags still
                # gets a (zero) result when the scope is "every SKU seen".
                kept = epcs_by_sku.setdefault(sku, set())
                if epc not in self._sold:
                    kept.add(epc)
            skus = self.scope_skus if self.scope_skus is not None else epcs_by_sku.keys()
            results = []
            for sku in sorted(skus):
                kept_epcs = frozenset(epcs_by_sku.get(sku, ()))
                results.append(CountResult(sku, len(kept_epcs), kept_epcs))
            self._results = tuple(results)
        return list(self._results)

    def counted_sku(self, epc_hex: str) -> str | None:
        """The SKU an EPC was counted for, or ``None`` if it is not counted."""
        return self._counted.get(epc_hex.upper())

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` has been called (the count is fixed)."""
        return self._results is not None

    def covers(self) -> list[CountCover]:
        """The positions the session's ``COUNT``\\ s cover, one per result: its SKUs at its
        location. Empty while it runs (nothing is in the stream yet); with the scope "every SKU
        seen", only the SKUs it read."""
        if self._results is None:
            return []
        return [
            CountCover(self.location_id, r.sku, self.count_id, self.started_at)
            for r in self._results
        ]

    # -- diagnostics -----------------------------------------------------------------------------

    @property
    def total_reads(self) -> int:
        """Every call to :meth:`read`, whatever its outcome."""
        return self._outcomes.total()

    @property
    def bad_reads(self) -> int:
        """Reads of tags that are not a decodable SGTIN-96."""
        return self._outcomes[ReadOutcome.BAD]

    @property
    def unknown_reads(self) -> int:
        """Reads of SGTINs whose GTIN the catalogue does not list."""
        return self._outcomes[ReadOutcome.UNKNOWN]

    @property
    def out_of_scope_reads(self) -> int:
        """Reads of known SKUs outside :attr:`scope_skus`."""
        return self._outcomes[ReadOutcome.OUT_OF_SCOPE]

    @property
    def late_reads(self) -> int:
        """Reads that arrived after :meth:`stop` (reader reports still in flight)."""
        return self._outcomes[ReadOutcome.LATE]

    @property
    def unknown_gtins(self) -> frozenset[str]:
        """GTIN-14s read but missing from the catalogue: what to add to it."""
        return frozenset(self._unknown_gtins)

    @property
    def reads_by_antenna(self) -> Mapping[tuple[str, int], int]:
        """Read count per ``(reader_id, antenna)``: a silent antenna shows up as absent."""
        return dict(self._reads_by_antenna)

    @property
    def sales_without_epc(self) -> int:
        """Sales recorded during the session that named no EPC (the count's uncertainty)."""
        return self._sales_without_epc


#: Counts :class:`CountMarks` remembers per position (one SKU at one location), as many as the
#: server (``RECENT_COUNTS``): only the latest marks movements, the others make a ``COUNT`` sent
#: again (which the server ignores) recognisable, so that it does not become the latest.
KEEP_PER_POSITION = 4


class CountMarks:
    """The counts in the agent's stream, per position: which one a late movement is marked with.

    Domain invariant 7: a movement is marked as preceding a count only if that count covered its
    SKU at its location. The position's ``on_hand`` rests on the latest of those in the stream;
    a movement that happened before that one started is already in it and is marked with it (the
    server then records it as a correction of that count's variance, leaving ``on_hand`` alone);
    any other applies on top. Every way a movement gets its ``count_id`` at the agent goes
    through :meth:`mark`.

    Args:
        covers: the covers known so far, in stream order (the count store keeps them).
        keep: counts remembered per position; older ones are forgotten.
    """

    def __init__(self, covers: Iterable[CountCover] = (), *, keep: int = KEEP_PER_POSITION) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep
        self._by_position: dict[tuple[str, str], list[CountCover]] = {}
        self.add(covers)

    def add(self, covers: Iterable[CountCover]) -> list[CountCover]:
        """Note ``COUNT``\\ s put in the stream, in stream order; returns those not known before.

        A count already known at a position (the same ``COUNT`` sent again, which the server
        ignores) keeps its first cover: it stands from when it was first counted.
        """
        new = []
        for cover in covers:
            kept = self._by_position.setdefault((cover.location_id, cover.sku), [])
            if any(c.count_id == cover.count_id for c in kept):
                continue
            kept.append(cover)
            new.append(cover)
            del kept[: -self.keep]
        return new

    def __iter__(self) -> Iterator[CountCover]:
        """Every cover remembered, position by position, each in stream order."""
        for kept in self._by_position.values():
            yield from kept

    def mark(self, sku: str, location_id: str, occurred_at: datetime) -> str:
        """The ``count_id`` a movement of ``sku`` at ``location_id`` that happened at
        ``occurred_at`` (agent clock) must carry, reaching the agent now: the position's latest
        count if the movement happened before it started, else ``""``.

        A ``count_id`` a device set on the movement is not taken on trust: only the agent knows
        which counts are in its stream, so this answer replaces it.

        Raises:
            ValueError: ``occurred_at`` is naive.
        """
        _require_aware("occurred_at", occurred_at)
        kept = self._by_position.get((location_id, sku))
        if kept and occurred_at < kept[-1].started_at:
            return kept[-1].count_id
        return ""


def precedes_count(
    movement_occurred_at: datetime, session: CountSession, *, sku: str, location_id: str
) -> bool:
    """Whether a movement of ``sku`` at ``location_id`` reaching the agent now would be marked
    with ``session.count_id`` if ``session`` were the only count (:meth:`CountMarks.mark`).

    The rule: a movement that *occurred* before the session started but *arrives* after the count
    was emitted (``session.stopped``) is already reflected in what the readers saw (a unit sold
    before the count was not on the shelf to be read), *if the count covered its SKU at its
    location* (:meth:`CountSession.covers`). Applying it again would count it twice, so the agent
    sets its ``count_id`` and the server records it as a correction of the count's variance only.
    A count that did not cover it says nothing about it: the server would apply it as usual.

    A movement arriving while the session is still open is not marked: it goes into the stream
    before the ``COUNT``, which supersedes it naturally. A movement that occurred at or after the
    start is not marked either: it applies on top of the count.

    Both times must be on the agent's clock (the agent's own start time, and the movement time as
    the agent stamps or corrects it); comparing a till's clock with the agent's would make the
    rule depend on clock skew.

    Raises:
        ValueError: ``movement_occurred_at`` is naive.
    """
    marks = CountMarks(session.covers())
    return marks.mark(sku, location_id, movement_occurred_at) == session.count_id


def _require_aware(name: str, at: datetime | None) -> None:
    if at is not None and (at.tzinfo is None or at.utcoffset() is None):
        raise ValueError(f"{name} must be timezone-aware")


def on_agent_clock(
    occurred_at: datetime, received_at: datetime, sent_at: datetime | None = None
) -> datetime:
    """A till's ``occurred_at`` moved onto the agent's clock, for :meth:`CountMarks.mark`.

    * With ``sent_at`` (the till's clock when it sent the request): ``occurred_at`` is shifted
      by the offset observed on this very call, ``received_at - sent_at``. A till whose clock
      is 2 h slow stamps a sale made now "2 h ago" and sends it now with ``sent_at`` "now - 2 h":
      the sale lands at ``received_at``, after the count, where it belongs. The error left is the
      till-to-agent latency (LAN: milliseconds), and a backlog replayed after hours offline keeps
      its true distance in the past, since the till's clock offset, not its drift over the
      outage, is what is corrected.
    * Without ``sent_at``: ``occurred_at`` is trusted as is (a till that does not send
      ``sent_at`` must keep its clock synchronised).

    Either way the result is at most ``received_at``: nothing happened after the agent heard of
    it, whatever a fast clock says.

    Args:
        occurred_at: when the till says the movement happened (its clock).
        received_at: when the agent received the request (its clock).
        sent_at: the till's clock when it sent the request, if it says.

    Raises:
        ValueError: a naive time.
    """
    for name, at in (
        ("occurred_at", occurred_at),
        ("received_at", received_at),
        ("sent_at", sent_at),
    ):
        _require_aware(name, at)
    offset = received_at - sent_at if sent_at is not None else timedelta(0)
    return min(occurred_at + offset, received_at)
