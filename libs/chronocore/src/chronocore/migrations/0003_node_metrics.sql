-- Each node's own metrics, written with its heartbeat and rendered by any scheduler's
-- /metrics (see chronocore.metrics).
ALTER TABLE nodes ADD COLUMN metrics jsonb;
