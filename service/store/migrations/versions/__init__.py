"""Alembic revisions, in order: ``0001`` the first release's tables, ``0002`` everything added since."""
