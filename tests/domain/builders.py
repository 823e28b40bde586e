"""Small builders shared by the domain tests."""

from __future__ import annotations

from unistock.server.domain import AdjustmentSign, Movement, MovementType

T = MovementType
KEY = ("SKU-1", "STORE-1")


def mv(
    type_: MovementType = MovementType.SALE,
    quantity: int = 1,
    *,
    seq: int = 1,
    source_id: str = "edge-1",
    key: tuple[str, str] = KEY,
    **kw: object,
) -> Movement:
    """A valid movement of type_, overridable field by field."""
    fields: dict[str, object] = {}
    if type_ is MovementType.COUNT:
        fields["count_id"] = "C1"
    if type_ is MovementType.ADJUSTMENT:
        fields["adjustment_sign"] = AdjustmentSign.INCREASE
        fields["reason"] = "found"
    if type_ in (MovementType.TRANSFER_OUT, MovementType.TRANSFER_IN):
        fields["transfer_id"] = "TR-1"
    if type_ is MovementType.TRANSFER_OUT:
        fields["counterpart_location_id"] = "elsewhere"
    fields.update(kw)
    sku = fields.pop("sku", key[0])
    location_id = fields.pop("location_id", key[1])
    return Movement(
        source_id=source_id,
        seq=seq,
        sku=sku,  # type: ignore[arg-type]
        location_id=location_id,  # type: ignore[arg-type]
        type=type_,
        quantity=quantity,
        **fields,  # type: ignore[arg-type]
    )
