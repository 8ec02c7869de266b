"""Figures the monitoring app reports (the metrics API, the Prometheus gauges, the alert
evaluator): read-only, computed on request, one module per source.

- ``system``: this host (CPU, memory, disk of the data directory, load, our processes), Celery
  queues and workers.
- ``database``: PostgreSQL's own statistics (sizes, tuples, cache hit ratio, connections, long
  queries, index usage, vector indexes, slow statements).
- ``activity``: what tenants did (searches, training jobs, uploads), per tenant and chatbot.
- ``share``: one tenant's share of the server (its queued and running jobs, its rows, vectors,
  bytes and index sizes): what a tenant may see of the operator figures.
"""
