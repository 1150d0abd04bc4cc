-- A scheduler materializing a job holds a short lease on it, not its row lock: taking
-- the lease and writing the occurrences are one statement each, so a scheduler frozen
-- between them (SIGSTOP, a vanished host) holds no lock anyone waits on, and its lease
-- runs out by the database clock. The token fences its late write (see JobRepository).
ALTER TABLE jobs ADD COLUMN lease_token uuid;
ALTER TABLE jobs ADD COLUMN leased_until timestamptz;
