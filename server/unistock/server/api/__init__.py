"""Transports: the gRPC API (service, authentication, watch fan-out, error mapping)."""
