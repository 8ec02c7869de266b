"""Connection pooling settings of the database connections (filled in by issue 14's pooling work)."""

from __future__ import annotations


def configure(config: dict, env) -> dict:
    """``config`` (one entry of ``DATABASES``) with the pooling settings the environment asks for."""
    return config
