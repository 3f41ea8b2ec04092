"""The operator's surface: the management API (``/api/v1``), its tokens and audit log,
the web view (``/ui/``) and the Prometheus exposition."""
