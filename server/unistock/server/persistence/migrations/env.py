"""Alembic environment: migrations run on the connection the server passes in
(persistence.sql.MasterDataStore.migrate), never on a URL of their own."""

from __future__ import annotations

from alembic import context

from unistock.server.persistence.sql import METADATA

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=METADATA)
with context.begin_transaction():
    context.run_migrations()
