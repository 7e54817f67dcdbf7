"""Alembic migrations of the fracture-qi database, packaged so an installed suite can migrate.

Run them through :func:`fracture_qi.store.open_store` (or ``fracture_qi.store.init``), never
with a separate ``alembic.ini``: the URL is passed programmatically. ``versions/`` holds
one file per revision; ``0001_initial`` creates the whole data model of
:mod:`fracture_qi.store.schema` plus the append-only guard on ``adjudication_events``.

To add a revision after changing ``schema.py``::

    .venv/bin/python -m fracture_qi.store revision -m "what changed"

then review the generated file (autogenerate misses server-side objects such as triggers).
"""
