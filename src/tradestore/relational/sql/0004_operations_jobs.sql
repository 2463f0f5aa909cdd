-- tradestore 0004: the ledger of `tradestore serve`, one row per scheduled job.
-- `serve --once` runs from cron or a systemd timer, a new process each time: a job is due when its
-- interval has passed since its last success, so that success must outlive the process. It lives
-- here, beside the advisory lock that keeps two serve processes from running one job together,
-- so one server both coordinates and remembers (a state file would do neither across hosts).

CREATE TABLE operations_jobs (
    job TEXT PRIMARY KEY CHECK (length(job) BETWEEN 1 AND 64),
    last_success_at TIMESTAMPTZ,
    last_run_at TIMESTAMPTZ NOT NULL,
    last_status TEXT NOT NULL CHECK (last_status IN ('ok', 'failed')),
    last_error TEXT,
    last_duration_s DOUBLE PRECISION NOT NULL CHECK (last_duration_s >= 0),
    runs BIGINT NOT NULL DEFAULT 0 CHECK (runs >= 0),
    failures BIGINT NOT NULL DEFAULT 0 CHECK (failures >= 0),
    last_by TEXT NOT NULL CHECK (length(last_by) BETWEEN 1 AND 255)
);
