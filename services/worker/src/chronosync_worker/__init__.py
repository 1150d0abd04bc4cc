"""The ChronoSync worker: a gRPC server that accepts dispatched tasks up to its capacity
and runs each on a ``concurrent.futures`` pool (see ``pool.py``)."""
