"""A back-office process using MovementWriter, for the kill -9 tests of test_writer.py.

python -m tests.client.writer_child TARGET TOKEN FILE N FLUSH

Records movements 1..N (RECEIPT of i units of SKU-{i % 3} at dc-1, request_id "line-{i}",
as a caller that does not know which of them a previous, killed run recorded), printing
"<i> <seq> <new>" after each; then, when FLUSH is "1", flushes and prints the FlushResult as
JSON ({"applied", "duplicates", "rejected"}).
"""

from __future__ import annotations

import asyncio
import json
import sys

from unistock.client import MovementWriter, UnistockClient
from unistock.v1 import inventory_pb2 as pb

SOURCE = "wms-child"


def movement(i: int) -> pb.Movement:
    """The i-th movement (1-based): RECEIPT of i units."""
    return pb.Movement(sku=f"SKU-{i % 3}", location_id="dc-1", type=pb.RECEIPT, quantity=i)


async def main(target: str, token: str, path: str, n: int, flush: bool) -> None:
    async with (
        UnistockClient(target, token) as client,
        MovementWriter(client, SOURCE, path, batch_size=7) as writer,
    ):
        for i in range(1, n + 1):
            got = await writer.record(movement(i), request_id=f"line-{i}")
            print(i, got.seq, int(got.new), flush=True)
        if flush:
            result = await writer.flush(60)
            print(
                json.dumps(
                    {
                        "applied": result.applied,
                        "duplicates": result.duplicates,
                        "rejected": len(result.rejected),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"))
