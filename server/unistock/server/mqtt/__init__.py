"""MQTT transport: ingestion of store edge agents' movement batches, acks after durability."""

from unistock.server.mqtt.ingest import MqttIngestor, StoreBatch
from unistock.server.mqtt.locations import LocationDirectory

__all__ = ["LocationDirectory", "MqttIngestor", "StoreBatch"]
