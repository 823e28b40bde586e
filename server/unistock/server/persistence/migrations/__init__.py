"""Alembic migrations of the master-data schema (run at server start-up; see persistence.sql)."""
