"""The ChronoSync coordinator: claims due tasks (``claim.py``), hands them to live
workers over gRPC (``dispatch.py``) and recovers dead nodes' work (``recovery.py``)."""
