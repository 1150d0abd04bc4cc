"""ChronoSync's domain library: configuration, SQL, migrations, the task repository, the
node registry, submission validation and the worker RPC stubs. Services are thin shells
around it."""

__version__ = "0.1.0"
