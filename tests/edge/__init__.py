"""Tests for the store edge agent's pure logic: EPC decoding, catalogue, count sessions."""
