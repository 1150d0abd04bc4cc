# One image, three entrypoints: chronosync-scheduler, chronosync-coordinator,
# chronosync-worker (pick one with the container's command).
FROM python:3.11-slim

# openssl: `chronosync certs` makes the cluster's throwaway TLS certificates.
RUN apt-get update && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /home/chronosync chronosync \
    && mkdir /certs && chown chronosync /certs
WORKDIR /app
COPY libs/chronocore libs/chronocore
COPY services services
RUN pip install --no-cache-dir libs/chronocore services/scheduler services/coordinator \
        services/worker

USER chronosync
ENV PYTHONUNBUFFERED=1

CMD ["chronosync-scheduler"]
