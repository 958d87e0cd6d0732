"""Alembic environment of the tickets database, usable without an alembic.ini.

``alembic_config()`` builds the configuration in code, so the ticketer, tests
and operators (``alembic`` via Python) all use the same script location.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy.engine import Connection

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    """Return an Alembic ``Config`` for the tickets database at ``url``.

    When ``connection`` is given, ``env.py`` migrates on it inside the caller's
    transaction (the caller holds the migration lock and commits).
    """
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # ConfigParser interpolation treats "%" specially (URL-encoded passwords).
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config
