"""Alembic's environment: migrations run on the connection ``service.store.schema`` hands over
(inside its transaction, under its lock); there is no ``alembic.ini`` and no offline mode."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
