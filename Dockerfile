# One image, three entrypoints: chronosync-scheduler, chronosync-coordinator,
# chronosync-worker (pick one with the container's command; `chronosync` is the CLI, from
# libs/chronosync-dev: the compose certs step and `chronosync migrate` run it).
# Health checks depend on the role, so they live with the roles: docker-compose.yml
# (healthcheck) and deploy/k8s/ (probes). tests/unit/test_deploy.py keeps them in step.
FROM python:3.11-slim

# openssl: `chronosync certs` makes the cluster's throwaway TLS certificates.
# tini: PID 1 reaps what commands leave behind (else each is a zombie until restart).
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it (deploy/k8s: 10001);
# not --system, whose uid range stops at 999.
# Commands run as a user of their own (10002, CHRONOSYNC_RUN_AS of the workers, which
# start as root only to switch to it): never the nodes' user, so a command cannot read a
# node's environment, keys or token, nor signal it. /work is their working directory.
RUN apt-get update && apt-get install -y --no-install-recommends openssl tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 chronosync \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/chronosync \
        chronosync \
    && groupadd --gid 10002 chronosync-run \
    && useradd --uid 10002 --gid 10002 --create-home \
        --home-dir /home/chronosync-run chronosync-run \
    && mkdir /certs && chown 10001:10001 /certs \
    && mkdir /work && chown 10002:10001 /work && chmod 0770 /work
WORKDIR /app
COPY libs/chronocore libs/chronocore
COPY libs/chronosync-dev libs/chronosync-dev
COPY services services
RUN pip install --no-cache-dir libs/chronocore libs/chronosync-dev services/scheduler \
        services/coordinator services/worker

USER 10001:10001
ENV PYTHONUNBUFFERED=1

ENTRYPOINT ["tini", "--"]
CMD ["chronosync-scheduler"]
