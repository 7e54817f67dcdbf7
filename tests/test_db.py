from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from fracture_qi.errors import StoreError
from fracture_qi.store.db import connect, normalise_url


def test_sqlite_gets_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_relative_sqlite_url_is_relative_to_base(tmp_path: Path) -> None:
    url = normalise_url("sqlite:///sub/f.db", base=tmp_path)
    assert url == f"sqlite:///{(tmp_path / 'sub' / 'f.db').resolve()}"


def test_postgresql_url_uses_psycopg3() -> None:
    assert normalise_url("postgresql://u@h/db").startswith("postgresql+psycopg://")


def test_bad_url_names_fix() -> None:
    with pytest.raises(StoreError, match="Fix: use sqlite"):
        normalise_url("not a url")
