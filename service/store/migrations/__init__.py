"""Alembic migrations of the metadata database (run by ``service.store.schema``, never by hand-edited
``ALTER TABLE``s). ``versions/`` holds one revision per schema change, oldest first."""
