"""The monitoring app's REST API, a package by concern: ``metrics`` (``/api/metrics/*`` and
``/api/analytics/{chatbot_id}``) and ``alerts`` (alert rules and alerts)."""
