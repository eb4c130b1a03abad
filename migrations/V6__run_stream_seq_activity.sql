-- The runner stream (GET /runs/:runId/stream): the highest committed frame
-- `seq` of a run, written in the transaction of the frame's rows, so that a
-- runner that reconnects and resends is written exactly once.
--
-- last_activity_at: the last start, variable write, finish or ping of an open
-- stream (variable writes refresh it at most about once a second).
ALTER TABLE script_runs
    ADD COLUMN stream_seq bigint NOT NULL DEFAULT 0 CHECK (stream_seq >= 0),
    ADD COLUMN last_activity_at timestamptz NOT NULL DEFAULT now();

UPDATE script_runs SET last_activity_at = COALESCE(ended_at, started_at);
