"""Alerts: rules as data (``rules``), the metrics they watch (``sources``), the evaluator
(``evaluate``), deliveries (``notify``) and the reads the API and dashboard share (``selectors``)."""
