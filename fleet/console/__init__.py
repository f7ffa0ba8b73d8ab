"""The operator console: a FastAPI app on the fleet database (issue 17).

Pages (server-rendered shells; the browser draws tables and plots from the JSON API):
fleet (devices, schematic map), live alerts (server-sent events), noise per pole, traffic per
detector. Every script and style is served by the app itself: the control room may be offline.

Layout: ``settings`` (the console's config), ``auth`` (users, sessions, roles, CSRF, the
``action`` guard every state change goes through), ``queries`` (all SQL on the ingest
schema), ``api`` (JSON), ``live`` (LISTEN/NOTIFY -> SSE), ``pages`` (HTML), ``metrics``
(Prometheus), ``app`` (the factory that wires them).
"""
