"""Property tests: idempotent re-delivery, holds never negative, reconciliation, fingerprints."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from unistock.server.domain import (
    AdjustmentSign,
    InsufficientStock,
    Line,
    Movement,
    MovementType,
    Outcome,
    Position,
    Reservation,
    ReservationKind,
    ReserveRequest,
    fingerprint,
    reconcile_holds,
    reserve,
)

T = MovementType
KEYS = [(sku, loc) for sku in ("S1", "S2") for loc in ("L1", "L2")]
SOURCES = ("edge-A", "edge-B", "wms")

step_st = st.tuples(
    st.sampled_from(SOURCES),
    st.sampled_from(KEYS),
    st.sampled_from(list(MovementType)),
    st.integers(0, 8),
    st.sampled_from(AdjustmentSign),
    st.integers(0, 3),  # 0: no count_id, else refer to an earlier count (or a future one)
    st.integers(0, 2),  # seq gap
)


def build(steps: list[tuple]) -> list[Movement]:
    """Valid movements with strictly increasing seq per source; counts get fresh ids."""
    seqs = dict.fromkeys(SOURCES, 0)
    counts: list[str] = []
    out = []
    for i, (source, key, type_, quantity, sign, count_ref, gap) in enumerate(steps):
        seqs[source] += 1 + gap
        count_id = ""
        if type_ is T.COUNT:
            count_id = f"C{i}"
            counts.append(count_id)
        elif count_ref and counts:
            count_id = counts[-count_ref] if count_ref <= len(counts) else f"later-{i}"
        m = Movement(
            source_id=source,
            seq=seqs[source],
            sku=key[0],
            location_id=key[1],
            type=type_,
            quantity=quantity if type_ is T.COUNT else max(quantity, 1),
            count_id=count_id,
            reason="damage" if type_ is T.ADJUSTMENT else "",
            transfer_id="T1" if type_ in (T.TRANSFER_OUT, T.TRANSFER_IN) else "",
            counterpart_location_id="elsewhere" if type_ is T.TRANSFER_OUT else "",
            adjustment_sign=sign if type_ is T.ADJUSTMENT else None,
        )
        out.append(m.validate())
    return out


def fresh(initial: list[int]) -> dict[tuple[str, str], Position]:
    return {k: Position(k, on_hand=q) for k, q in zip(KEYS, initial, strict=True)}


def state(ps: dict[tuple[str, str], Position]) -> object:
    return {
        k: (p.on_hand, p.reserved, p.version, p.marks, p.counts, p.hold_items())
        for k, p in ps.items()
    }


initial_st = st.lists(st.integers(-3, 20), min_size=len(KEYS), max_size=len(KEYS))


@given(initial_st, st.lists(step_st, max_size=40))
def test_second_pass_changes_nothing(initial: list[int], steps: list[tuple]) -> None:
    ms = build(steps)
    ps = fresh(initial)
    for m in ms:
        ps[m.key].apply(m)
    once = state(ps)
    for m in ms:
        assert ps[m.key].apply(m).outcome is Outcome.DUPLICATE
    assert state(ps) == once


@given(initial_st, st.lists(step_st, max_size=40), st.lists(st.integers(0, 3), max_size=40))
def test_interleaved_redeliveries_change_nothing(
    initial: list[int], steps: list[tuple], repeats: list[int]
) -> None:
    """Each movement delivered 1-4 times in a row, plus replays of older ones: same end state."""
    ms = build(steps)
    once = fresh(initial)
    for m in ms:
        once[m.key].apply(m)
    many = fresh(initial)
    for i, m in enumerate(ms):
        first = many[m.key].apply(m)
        assert first.outcome is not Outcome.DUPLICATE
        n = repeats[i] if i < len(repeats) else 0
        for j in range(n):
            assert many[m.key].apply(m).outcome is Outcome.DUPLICATE
            older = ms[(i * 7 + j) % (i + 1)]  # some earlier movement, replayed
            assert many[older.key].apply(older).outcome is Outcome.DUPLICATE
    assert state(many) == state(once)


@given(initial_st, st.lists(step_st, max_size=40))
def test_on_hand_is_last_count_plus_signed_movements_after_it(
    initial: list[int], steps: list[tuple]
) -> None:
    """Conservation, without count corrections (no movement names a count)."""
    ms = build([(*s[:5], 0, s[6]) for s in steps])
    ps = fresh(initial)
    base = dict(zip(KEYS, initial, strict=True))
    since = dict.fromkeys(KEYS, 0)
    for m in ms:
        res = ps[m.key].apply(m)
        assert res.outcome is Outcome.APPLIED
        if m.type is T.COUNT:
            assert res.variance == m.quantity - (base[m.key] + since[m.key])
            base[m.key], since[m.key] = m.quantity, 0
        else:
            since[m.key] += m.signed_quantity
    for k, p in ps.items():
        assert p.on_hand == base[k] + since[k]
        assert p.version == sum(1 for m in ms if m.key == k)


op_st = st.one_of(
    st.tuples(
        st.just("reserve"),
        st.integers(0, 5),
        st.lists(
            st.tuples(st.sampled_from(KEYS), st.integers(1, 6)),
            min_size=1,
            max_size=3,
            unique_by=lambda t: t[0],
        ),
    ),
    st.tuples(st.just("release"), st.integers(0, 5), st.none() | st.integers(0, 7)),
    st.tuples(st.just("release_at"), st.integers(0, 5), st.sampled_from(KEYS)),
    st.tuples(st.just("sale"), st.integers(0, 5), st.sampled_from(KEYS), st.integers(1, 6)),
    st.tuples(st.just("safety"), st.sampled_from(KEYS), st.integers(0, 6)),
)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 15), min_size=4, max_size=4), st.lists(op_st, max_size=60))
def test_random_reserve_release_never_makes_reserved_negative(
    initial: list[int], ops: list[tuple]
) -> None:
    ps = fresh(initial)
    seq = 0
    for op in ops:
        if op[0] == "reserve":
            _, n, lines = op
            rid = f"R{n}"
            fits = all(q <= ps[k].available for k, q in lines)
            try:
                reserve(
                    ReserveRequest.build(
                        rid, [Line(k[0], k[1], q) for k, q in lines], ReservationKind.CART
                    ),
                    ps,
                    0.0,
                )
                assert fits
            except InsufficientStock:
                assert not fits
        elif op[0] == "release":
            _, n, quantity = op
            for p in ps.values():
                held = p.held(f"R{n}")
                freed = p.release(f"R{n}", quantity)
                assert 0 <= freed <= held
        elif op[0] == "release_at":
            _, n, key = op
            ps[key].release(f"R{n}")
            assert ps[key].held(f"R{n}") == 0
        elif op[0] == "sale":
            _, n, key, q = op
            seq += 1
            held = ps[key].held(f"R{n}")
            res = ps[key].apply(
                Movement("till", seq, key[0], key[1], T.SALE, q, reservation_id=f"R{n}")
            )
            assert res.picked_up == min(held, q)
        else:
            _, key, units = op
            ps[key].set_safety_stock(units)
        for p in ps.values():
            assert p.reserved >= 0
            assert p.reserved == sum(q for _, q in p.hold_items())
            assert all(q > 0 for _, q in p.hold_items())
            assert p.available >= 0


@given(
    st.dictionaries(st.sampled_from(["R1", "R2", "R3", "R4"]), st.integers(1, 10), max_size=4),
    st.dictionaries(
        st.sampled_from(["R1", "R2", "R3", "R4"]),
        st.none()
        | st.tuples(
            st.sampled_from(["ACTIVE", "RELEASED", "EXPIRED", "FULFILLED"]), st.integers(1, 10)
        ),
    ),
)
def test_reconcile_holds_leaves_only_backed_holds(
    holds: dict[str, int], records_spec: dict[str, tuple[str, int] | None]
) -> None:
    key = ("S1", "L1")
    p = Position(key, on_hand=100, holds=tuple(holds.items()))
    ps = {key: Position(key, on_hand=1000)}
    records: dict[str, Reservation | None] = {}
    for rid, spec in records_spec.items():
        if spec is None:
            records[rid] = None
            continue
        state_name, q = spec
        r = reserve(ReserveRequest.build(rid, [Line("S1", "L1", q)], 5), ps, 0.0)
        if state_name == "RELEASED":
            r = r.release()
        elif state_name == "EXPIRED":
            r = r.extend(1.0, 0.0).expire(2.0)  # type: ignore[assignment]
        elif state_name == "FULFILLED":
            r = r.fulfil()
        records[rid] = r
    before = dict(p.hold_items())
    freed, shipped = reconcile_holds(p, records)
    after = dict(p.hold_items())
    assert freed + shipped == sum(before.values()) - sum(after.values())
    assert p.reserved == sum(after.values())
    # A fulfilment the record has and the position had not: its units left on_hand too.
    assert shipped == sum(
        min(units, records[rid].progress_of(key).shipped)  # type: ignore[union-attr]
        for rid, units in before.items()
        if records.get(rid) is not None
    )
    assert p.on_hand == 100 - shipped
    for rid, units in after.items():
        record = records.get(rid)
        assert record is not None
        assert record.active
        assert units == min(before[rid], record.held(key))
    for rid in before.keys() - after.keys():
        record = records.get(rid)
        assert record is None or record.held(key) == 0


@given(
    st.lists(
        st.tuples(st.sampled_from(["A", "B", "C"]), st.sampled_from(["L1", "L2"])),
        min_size=1,
        max_size=6,
        unique=True,
    ).flatmap(
        lambda keys: st.tuples(
            st.just(keys), st.lists(st.integers(1, 9), min_size=len(keys), max_size=len(keys))
        )
    ),
    st.randoms(use_true_random=False),
)
def test_fingerprint_ignores_order(spec: tuple, rnd) -> None:  # type: ignore[no-untyped-def]
    keys, qs = spec
    lines = [Line(s, loc, q) for (s, loc), q in zip(keys, qs, strict=True)]
    shuffled = list(lines)
    rnd.shuffle(shuffled)
    assert fingerprint(lines) == fingerprint(shuffled)
    bumped = [*lines[:-1], Line(lines[-1].sku, lines[-1].location_id, lines[-1].quantity + 1)]
    assert fingerprint(bumped) != fingerprint(lines)
