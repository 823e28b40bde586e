"""Parsing reader messages (Zebra FX IoT Connector events, the Unistock form) and topics."""

from __future__ import annotations

import datetime
import json

import pytest

from tests.docs import example
from unistock.edge.readers import (
    DEFAULT_READER_TOPIC,
    PayloadError,
    TagReadEvent,
    parse_tag_reads,
    reader_from_topic,
)

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
EPC = "3034257BF400B7800004CB2F"

ZEBRA = {
    "data": {
        "idHex": EPC.lower(),
        "antenna": 3,
        "peakRssi": -55,
        "eventNum": 7,
        "format": "epc",
        "channel": 915.25,
    },
    "timestamp": "2021-03-24T16:22:35.342+0000",
    "type": "SIMPLE",
}


def parse(doc: object, reader: str = "fx-1") -> tuple[list[TagReadEvent], int]:
    return parse_tag_reads(json.dumps(doc).encode(), reader, NOW)


def test_zebra_event() -> None:
    [read], bad = parse(ZEBRA)
    assert bad == 0
    assert read == TagReadEvent(
        EPC, "fx-1", 3, datetime.datetime(2021, 3, 24, 16, 22, 35, 342000, tzinfo=datetime.UTC)
    )


def test_array_of_events_keeps_the_good_ones() -> None:
    reads, bad = parse([ZEBRA, {"data": {"antenna": 1}}, 42, {"epc": "30aa", "antenna": 1}])
    assert [r.epc for r in reads] == [EPC, "30AA"]
    assert bad == 2


def test_unistock_form_names_its_reader_and_time() -> None:
    [read], _ = parse(
        {"epc": EPC, "reader_id": "hh-2", "antenna": 0, "read_at": "2026-01-01T00:00:00Z"}
    )
    assert (read.reader_id, read.antenna, read.read_at.year) == ("hh-2", 0, 2026)
    [read], _ = parse({"epc": EPC})
    assert (read.reader_id, read.antenna, read.read_at) == ("fx-1", 0, NOW)


@pytest.mark.parametrize("stamp", ["yesterday", 17, "2021-03-24T16:22:35"])
def test_unreadable_or_naive_reader_time_falls_back_to_receipt(stamp: object) -> None:
    [read], _ = parse({**ZEBRA, "timestamp": stamp})
    assert read.read_at == NOW


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"\xff\xfe",
        b'"a string"',
        json.dumps({"data": {"idHex": "", "antenna": 1}}).encode(),
        json.dumps({"data": {"idHex": EPC, "antenna": -1}}).encode(),
        json.dumps({"data": {"idHex": EPC, "antenna": True}}).encode(),
        json.dumps({"data": {"idHex": EPC, "format": "tid"}}).encode(),
        json.dumps({"epc": EPC, "reader_id": ""}).encode(),
        json.dumps({"sku": "A"}).encode(),
    ],
)
def test_not_a_tag_read(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_tag_reads(payload, "fx-1", NOW)


@pytest.mark.parametrize(
    ("topic", "topic_filter", "reader"),
    [
        ("unistock/v1/stores/s1/readers/fx-door/tags", DEFAULT_READER_TOPIC, "fx-door"),
        ("zebra/FX9600F0D1/data", "zebra/+/data", "FX9600F0D1"),
        ("zebra/FX9600F0D1/data", "zebra/#", "zebra/FX9600F0D1/data"),
        ("/FX7500EECCA8/data", "/FX7500EECCA8/data", "/FX7500EECCA8/data"),
    ],
)
def test_reader_id_from_the_topic(topic: str, topic_filter: str, reader: str) -> None:
    assert reader_from_topic(topic, topic_filter.replace("{store_id}", "s1")) == reader


def test_cli_reader_flags() -> None:
    from unistock.edge.cli import parse as parse_cli

    s = parse_cli(
        [
            *("--store-id", "s1", "--reader-mqtt-url", "mqtt://127.0.0.1:1884"),
            *("--reader-topic", "zebra/+/data", "--reader-location", "fx-back=s1-back"),
        ]
    )
    assert (s.reader_mqtt_url, s.reader_topics) == ("mqtt://127.0.0.1:1884", ("zebra/+/data",))
    assert (s.reader_location("fx-back"), s.reader_location("fx-door")) == ("s1-back", "s1")
    assert parse_cli(["--store-id", "s1"]).reader_topics == (DEFAULT_READER_TOPIC,)
    with pytest.raises(SystemExit):
        parse_cli(["--store-id", "s1", "--reader-location", "fx-back"])


def test_the_docs_zebra_payload_is_a_read() -> None:
    """The Zebra IoT Connector event docs/integration-stores.md shows, as a reader sends it."""
    payload = example("zebra-tag-read").text.encode()
    [read], bad = parse_tag_reads(payload, "fx-backroom", NOW)
    assert bad == 0
    assert read == TagReadEvent(
        EPC,
        "fx-backroom",
        1,
        datetime.datetime(2021, 3, 24, 16, 22, 35, 342000, tzinfo=datetime.UTC),
    )
