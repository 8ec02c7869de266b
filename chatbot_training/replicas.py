"""Streaming replicas for search reads (filled in by issue 14's read-replica work)."""

from __future__ import annotations


def databases(env, make) -> dict:
    """Extra ``DATABASES`` entries, one per URL of ``DATABASE_REPLICA_URLS`` (``make`` builds an entry from a URL)."""
    return {}
