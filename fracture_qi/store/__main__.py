"""``python -m fracture_qi.store revision -m MSG`` / ``check``: Alembic helpers for developers."""

from fracture_qi.store.init import _revision_cli

if __name__ == "__main__":
    raise SystemExit(_revision_cli())
