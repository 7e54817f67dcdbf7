"""The suite's database: schema (:mod:`.schema`), engines (:mod:`.db`), migrations (:mod:`.init`).

>>> from fracture_qi.store import open_store, session_scope
"""

from fracture_qi.store.db import connect, normalise_url, session_scope
from fracture_qi.store.init import (
    current_revision,
    head_revision,
    open_store,
    schema_differences,
    upgrade,
)

#: alias: some callers say init_db
init_db = open_store

__all__ = [
    "connect",
    "current_revision",
    "head_revision",
    "init_db",
    "normalise_url",
    "open_store",
    "schema_differences",
    "session_scope",
    "upgrade",
]
