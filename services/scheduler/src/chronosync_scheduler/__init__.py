"""The ChronoSync scheduler: the HTTP API (``api.py`` for what each route does,
``http.py`` for the server and the wire rules)."""
