"""ChronoSync's tools beside the domain: the ``chronosync`` command line (``cli``), a
local cluster of real node processes (``devcluster``) and ephemeral PostgreSQL clusters
(``pgcluster``). ``make dev``, the tests and the bench use them; the services never
import them."""
