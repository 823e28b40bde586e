"""Stored formats round-trip, and stored levels are valid wire messages without parsing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from unistock.server.domain import (
    AdjustmentSign,
    ItemCondition,
    Line,
    Movement,
    MovementResult,
    MovementType,
    Outcome,
    Position,
    ReservationKind,
    ReserveRequest,
    reserve,
)
from unistock.server.persistence.codec import (
    decode_feed,
    decode_reservation,
    decode_stored,
    encode_position,
    encode_reservation,
    feed_change,
    hold_value,
    level_bytes,
    parse_hold,
    position_entry,
    private_bytes,
    split_position,
    stock_level_entry,
    stored_entry,
    varint,
)
from unistock.server.persistence.store import stored_version
from unistock.storage.v1 import storage_pb2 as spb
from unistock.v1 import inventory_pb2 as pb

ids = st.text(alphabet="abcXYZ019-_.:", min_size=1, max_size=20)


def positions(ids: st.SearchStrategy[str], big: int) -> st.SearchStrategy[Position]:
    """Positions with arbitrary levels, marks (spilled or not), holds (partly shipped or not)
    and count ids."""
    return st.builds(
        lambda on_hand, safety, version, marks, holds, counts, shipped, spilled, damaged: Position(
            ("SKU-1", "store-1"),
            on_hand=on_hand,
            non_sellable=damaged,
            safety_stock=safety,
            version=version,
            marks=tuple(marks.items()),
            holds=tuple(holds.items()),
            counts=tuple(counts),
            shipped=tuple((r, shipped) for r in list(holds)[:1] if shipped),
            spilled=spilled,
        ),
        st.integers(-big, big),
        st.integers(0, 1000),
        st.integers(0, 2**63 - 1),
        st.dictionaries(ids, st.integers(1, 2**63 - 1), max_size=4),
        st.dictionaries(ids, st.integers(1, big), max_size=4),
        st.lists(ids, max_size=4),
        st.integers(0, big),
        st.booleans(),
        st.integers(-big, big),
    )


def _holds_hash(p: Position) -> dict[bytes, bytes]:
    """The holds hash the runtime keeps beside p's stored form."""
    return {rid.encode(): hold_value(*p.hold_state(rid)) for rid, _ in p.hold_items()}


@given(positions(ids, 10**9))
def test_position_round_trip(p: Position) -> None:
    """The stored form and the holds hash together give the position back; the stored form
    says whether there is a holds hash to read."""
    data = encode_position(p)
    q, apart = decode_stored(p.key, data)
    assert apart == bool(p.holds)
    q.restore_holds(parse_hold(rid, v) for rid, v in _holds_hash(p).items())
    assert (q.on_hand, q.reserved, q.safety_stock, q.version, q.non_sellable) == (
        p.on_hand,
        p.reserved,
        p.safety_stock,
        p.version,
        p.non_sellable,
    )
    assert q.marks == p.marks
    assert q.hold_items() == p.hold_items()
    assert q.counts == p.counts
    assert q.shipped == p.shipped
    assert (q.spill is None) == (p.spill is None)
    assert stored_version(data) == p.version


@given(positions(st.text(min_size=1, max_size=200), 2**40))
def test_hand_serialisation_is_byte_identical_to_protobufs(p: Position) -> None:
    """The codec writes StockLevel and PositionPrivate by hand (speed); protobuf must agree."""
    level = pb.StockLevel(
        on_hand=p.on_hand,
        reserved=p.reserved,
        safety_stock=p.safety_stock,
        available=p.available,
        version=p.version,
        non_sellable=p.non_sellable,
        at_risk=p.at_risk,
        negative=p.negative,
    )
    private = spb.PositionPrivate(
        marks=[spb.SourceMark(source_id=s, seq=q) for s, q in p.marks],
        recent_count_ids=p.counts or (),
        marks_spilled=p.spill is not None,
        holds_apart=bool(p.holds),
    )
    assert level_bytes(p) == level.SerializeToString(deterministic=True)
    assert private_bytes(p) == private.SerializeToString(deterministic=True)


@given(positions(ids, 10**6))
def test_holds_stored_inside_a_position_are_read_and_rewritten_apart(p: Position) -> None:
    """A position stored before holds were kept apart (its holds in PositionPrivate.holds) is
    read with every hold, each marked changed: the next write moves them to the holds hash."""
    level, _ = split_position(encode_position(p))
    legacy = spb.PositionPrivate(
        marks=[spb.SourceMark(source_id=s, seq=q) for s, q in p.marks],
        holds=[
            spb.Hold(reservation_id=r, quantity=q, shipped=p.shipped_for(r))
            for r, q in p.hold_items()
        ],
        recent_count_ids=p.counts or (),
        marks_spilled=p.spill is not None,
    )
    data = encode_position(p)
    header = data[: len(data) - len(split_position(data)[1])]
    q, apart = decode_stored(p.key, header + legacy.SerializeToString())
    assert not apart
    assert level_bytes(q) == level
    assert q.hold_items() == p.hold_items()
    assert q.shipped == p.shipped
    assert q.hold_changes == ({r for r, _ in p.hold_items()} or None)


def test_hold_values() -> None:
    assert hold_value(3, 0) == b"3"
    assert hold_value(3, 2) == b"3/2"
    assert hold_value(0, 0) == b""  # deleted
    assert parse_hold(b"r-1", b"3/2") == ("r-1", 3, 2)
    assert parse_hold("r-1", b"7") == ("r-1", 7, 0)


def test_stored_level_is_a_wire_stock_level() -> None:
    p = Position(("SKU-9", "store-3"), on_hand=7, safety_stock=2, version=42, holds=(("r", 3),))
    level, _ = split_position(encode_position(p))
    entry = stock_level_entry(b"SKU-9", b"store-3", level)
    msg = pb.WatchAvailabilityResponse.FromString(entry + position_entry(p))
    assert len(msg.levels) == 2
    for lv in msg.levels:
        assert (lv.sku, lv.location_id, lv.on_hand, lv.reserved, lv.safety_stock) == (
            "SKU-9",
            "store-3",
            7,
            3,
            2,
        )
        assert (lv.available, lv.version) == (2, 42)


def test_long_ids_encode_multi_byte_lengths() -> None:
    sku = "S" * 128
    loc = "L" * 128
    p = Position((sku, loc), on_hand=1, version=1)
    msg = pb.GetAvailabilityResponse.FromString(position_entry(p))
    assert msg.levels[0].sku == sku
    assert msg.levels[0].location_id == loc


def test_reservation_round_trip() -> None:
    positions = {
        ("A", "s1"): Position(("A", "s1"), on_hand=5),
        ("B", "s2"): Position(("B", "s2"), on_hand=5),
    }
    req = ReserveRequest.build(
        "r-1",
        [Line("A", "s1", 2), Line("B", "s2", 1)],
        ReservationKind.E_RESERVATION,
        0,
        "web",
        "c9",
    )
    r = reserve(req, positions, now=1_700_000_000.25)
    partial = r.fulfil([Line("A", "s1", 1)])
    assert r.expires_at is not None
    warned = partial.warn(r.expires_at - 60, 900)  # the expiry an "expiring soon" was for
    assert warned is not None
    assert warned.warned_expires_at == r.expires_at
    for value in (r, partial, partial.release(), warned):
        back = decode_reservation(encode_reservation(value))
        assert back == value


@given(
    sku=st.text(alphabet="AZ09-", min_size=1, max_size=128),
    loc=ids,
    on_hand=st.integers(-5, 10**12),
)
def test_stored_entry_matches_the_general_encoding(sku: str, loc: str, on_hand: int) -> None:
    p = Position((sku, loc), on_hand=on_hand, version=on_hand % 1000 + 1)
    value = encode_position(p)
    entry = stored_entry(f"{loc}|{sku}".encode(), value)
    assert entry == position_entry(p)
    [level] = pb.WatchAvailabilityResponse.FromString(entry).levels
    assert (level.sku, level.location_id, level.on_hand) == (sku, loc, on_hand)


big_ints = st.integers(-(2**62), 2**62)


@given(
    source=st.text(min_size=1, max_size=40),
    seq=st.integers(1, 2**63 - 1),
    sku=st.text(alphabet="AZ09-.", min_size=1, max_size=128),
    loc=st.text(alphabet="az09-.", min_size=1, max_size=128),
    mtype=st.sampled_from(list(MovementType)),
    quantity=st.integers(0, 10**9),
    condition=st.sampled_from(list(ItemCondition)),
    sign=st.sampled_from([None, *AdjustmentSign]),
    texts=st.lists(st.text(max_size=50), min_size=5, max_size=5),
    outcome=st.sampled_from([Outcome.APPLIED, Outcome.COUNT_CORRECTION]),
    numbers=st.lists(big_ints, min_size=7, max_size=7),
    at_ms=st.integers(0, 2**50),
    version=st.integers(1, 2**63 - 1),
)
def test_feed_changes_read_back_as_written(
    source: str,
    seq: int,
    sku: str,
    loc: str,
    mtype: MovementType,
    quantity: int,
    condition: ItemCondition,
    sign: AdjustmentSign | None,
    texts: list[str],
    outcome: Outcome,
    numbers: list[int],
    at_ms: int,
    version: int,
) -> None:
    """A feed change, grouped under its position as the flush script groups it (field, count,
    changes), reads back as what was applied; the rare fields only when there are any."""
    rid, count_id, transfer_id, counterpart, reason = texts
    m = Movement(source, seq, sku, loc, mtype, quantity, rid, count_id, transfer_id, reason,
                 sign, (), condition, counterpart)  # fmt: skip
    delta, ns_delta, on_hand, non_sellable, available, variance, picked = numbers
    r = MovementResult(outcome, variance, picked)
    change = feed_change(at_ms, m, r, delta, ns_delta, on_hand, non_sellable, available, version)
    assert change[:8] == version.to_bytes(8, "big")  # what the script compares
    field = f"{loc}|{sku}".encode()
    entry = b"\x01" + varint(len(field)) + field + varint(2) + change + change
    first, second = decode_feed(entry)
    assert first == second
    assert (first.sku, first.location_id, first.version, first.at_ms, first.source_id) == (
        sku, loc, version, at_ms, source,
    )  # fmt: skip
    assert (first.seq, first.type, first.quantity, first.on_hand_delta) == (
        seq, mtype, quantity, delta,
    )  # fmt: skip
    assert (first.on_hand, first.available) == (on_hand, available)
    rare = any(texts) or sign or condition is not ItemCondition.SELLABLE
    rare = rare or outcome is not Outcome.APPLIED or variance or ns_delta or non_sellable
    if not rare:
        assert first.extra is None
    else:
        assert first.extra is not None
        x = first.extra
        assert (x.reservation_id, x.count_id, x.transfer_id, x.counterpart_location_id) == (
            rid, count_id, transfer_id, counterpart,
        )  # fmt: skip
        assert (x.reason, x.condition, x.adjustment_sign) == (reason, condition, sign or 0)
        assert x.count_correction == (outcome is Outcome.COUNT_CORRECTION)
        assert (x.non_sellable_delta, x.non_sellable, x.variance, x.picked_up) == (
            ns_delta, non_sellable, variance, picked,
        )  # fmt: skip


def test_a_fulfilments_shipment_reads_back_as_one() -> None:
    change = feed_change(1_700_000_000_000, None, None, -2, 0, 3, 0, 1, 42, "order-7")
    field = b"store-7|SHOE-42"
    [c] = decode_feed(b"\x01" + varint(len(field)) + field + varint(1) + change)
    assert (c.type, c.quantity, c.on_hand_delta, c.on_hand, c.available, c.version) == (
        None, 2, -2, 3, 1, 42,
    )  # fmt: skip
    assert (c.source_id, c.seq, c.sku, c.location_id) == ("", 0, "SHOE-42", "store-7")
    assert c.extra is not None
    assert c.extra.reservation_id == "order-7"


def test_level_changes_and_the_notable_reading_of_an_entry() -> None:
    """A LEVEL change reads back as one (classes, at-risk holds); decode_feed(notable=True)
    skips exactly the plain movements that leave on_hand at 0 or above, so the events derived
    from it are those derived from the whole entry."""
    from unistock.server.actors.events import derive
    from unistock.server.persistence.codec import LOW, OK, OUT, LevelFeedRecord, level_change

    def mv(seq: int, mtype: MovementType, qty: int, **kw: str) -> Movement:
        return Movement("till", seq, "A", "s1", mtype, qty, **kw)  # type: ignore[arg-type]

    plain = MovementResult(Outcome.APPLIED)
    changes = [
        feed_change(1, mv(1, MovementType.RECEIPT, 5), plain, 5, 0, 5, 0, 5, 1),
        level_change(1, 1, OUT, OK, 5, 5),
        feed_change(2, mv(2, MovementType.SALE, 4), plain, -4, 0, 1, 0, 1, 2),
        level_change(2, 2, OK, LOW, 1, 1),
        feed_change(3, mv(3, MovementType.SALE, 3), plain, -3, 0, -2, 0, 0, 3),  # negative
        feed_change(3, mv(5, MovementType.SALE, 1), plain, -1, 0, -3, 0, 0, 3),  # still: no news
        feed_change(4, mv(4, MovementType.COUNT, 2, count_id="C"), MovementResult(
            Outcome.APPLIED, variance=4), 4, 0, 2, 0, 2, 4),
        level_change(4, 4, OUT, OUT, 2, 0, {"cart-1": 3, "cart-2": 1}),
    ]  # fmt: skip
    field = b"s1|A"
    entry = b"\x01" + varint(len(field)) + field + varint(len(changes)) + b"".join(changes)
    everything = decode_feed(entry)
    notable = decode_feed(entry, notable=True)
    assert notable == [everything[i] for i in (1, 3, 4, 6, 7)]
    assert everything[7] == LevelFeedRecord(
        "A", "s1", 4, 4, OUT, OUT, 2, 0, (("cart-1", 3), ("cart-2", 1))
    )
    assert everything[3][4:6] == (OK, LOW)
    derived = [ev for r in everything for ev in derive(r)]
    assert [ev for r in notable for ev in derive(r)] == derived
    assert len(derived) == 6  # back in stock, low, negative, variance, 2 at risk
