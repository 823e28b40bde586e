"""Baselines: plain-Python/gRPC/Redis/PostgreSQL reference designs the scenarios compare against."""
