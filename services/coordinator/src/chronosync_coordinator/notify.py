"""The webhook deliverer: every coordinator runs one (see chronocore.webhooks for the
whole path of a notification and its guarantees).

Each step (``run_once``) claims the due deliveries no live lease holds, up to one per
sending thread, under a lease long enough for a request to time out and its result to be
written; posts them side by side; and records each result, fenced by the attempt. A
coordinator killed mid-request leaves its lease to expire: another one's step then takes
the delivery and sends it again (at least once).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from chronocore import metrics
from chronocore.lifecycle import Loop
from chronocore.webhooks import Delivery, Result, WebhookRepository, post

log = logging.getLogger(__name__)

ATTEMPTS = metrics.Counter("chronosync_webhook_attempts_total",
                           "Webhook requests made by this coordinator.")
FAILED_ATTEMPTS = metrics.Counter("chronosync_webhook_attempts_failed_total",
                                  "Webhook requests that did not get a 2xx answer.")
GIVEN_UP = metrics.Counter("chronosync_webhook_deliveries_given_up_total",
                           "Webhook deliveries this coordinator gave up (every attempt "
                           "failed, or the URL is no longer allowed).")

# Requests in flight at once per coordinator (and deliveries claimed per step): a slow
# receiver holds up no more than one of them.
SENDERS = 4
# Nothing due: look again after this (with jitter, so coordinators spread out). A
# notification waits at most this long, plus a request's time.
POLL_S = 1.0
POLL_JITTER = 0.2
# The lease covers the request plus the writing of its result. The timeout bounds each
# socket operation (a connection per address, each read), not the whole request: a
# request may take a few of them before the lease lets another coordinator send it again.
LEASE_TIMEOUTS = 3
LEASE_MARGIN_S = 5.0
PRUNE_EVERY_S = 600.0


class Deliverer(Loop):
    """A service: a ``Loop`` whose ``stop`` ends it after the requests in flight (each
    bounded by the timeout) and waits."""

    def __init__(self, *, hooks: WebhookRepository, owner: str, allow: tuple[str, ...],
                 timeout_s: float, retention_s: float) -> None:
        super().__init__(name="webhooks", interval_s=POLL_S, jitter=POLL_JITTER, daemon=False)
        self._hooks = hooks
        self._owner = owner
        self._allow = allow
        self._timeout_s = timeout_s
        self._retention_s = retention_s
        self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook")
        self._pruned_at = 0.0

    def stop(self) -> None:
        super().stop()
        self._senders.shutdown(wait=True)

    def run_once(self) -> float | None:
        """One step; if it delivered anything, look again at once (0)."""
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
            self._hooks.prune(retention_s=self._retention_s)
            self._pruned_at = time.monotonic()
        deliveries = self._hooks.claim(owner=self._owner, limit=SENDERS,
                                       lease_s=LEASE_TIMEOUTS * self._timeout_s + LEASE_MARGIN_S)
        list(self._senders.map(self._deliver, deliveries))  # waits for every request
        return 0.0 if deliveries else None

    def _deliver(self, delivery: Delivery) -> None:
        ATTEMPTS.inc()
        # The signature's timestamp is for the receiver's clock to judge (replays), not a
        # scheduling decision: this host's wall clock is the one to give it.
        try:
            result = post(delivery, allow=self._allow, timeout_s=self._timeout_s,
                          now=time.time())
        except Exception as exc:  # a defect, not the network: still an attempt, recorded
            log.exception("webhook delivery %s: unexpected error", delivery.id)
            result = Result(delivered=False, status=None,
                            error=f"unexpected error: {type(exc).__name__}")
        if not result.delivered:
            FAILED_ATTEMPTS.inc()
            log.warning("webhook %s (delivery %s) of %s to %s failed (attempt %s): %s",
                        delivery.event, delivery.id, _about(delivery), _origin(delivery.url),
                        delivery.attempts, result.error,
                        extra={"task_id": delivery.task_id})
        state = self._hooks.finish(delivery, result, owner=self._owner)
        if state is None:
            log.info("webhook delivery %s was taken over before its result was written",
                     delivery.id)
        elif state == "given_up":
            GIVEN_UP.inc()
            log.error("webhook %s (delivery %s) of %s to %s given up after %s attempts",
                      delivery.event, delivery.id, _about(delivery), _origin(delivery.url),
                      delivery.attempts,
                      extra={"task_id": delivery.task_id})


def _origin(url: str) -> str:
    """What a log line says of a webhook's URL: its scheme and host, and the delivery's
    id says the rest. Many receivers put their token in the path or the query (a chat's
    incoming-webhook URL is its credential), and logs are read by more people than the
    API's token holders."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc} (path withheld)"


def _about(delivery: Delivery) -> str:
    return (f"task {delivery.task_id}" if delivery.task_id is not None
            else f"job {delivery.job_id}")
