-- scriptd core schema. Every table carries tenant_id and every query filters on it.
-- Timestamps are written truncated to milliseconds by the application.

CREATE TABLE scripts (
    id                uuid        PRIMARY KEY,
    tenant_id         text        NOT NULL,
    name              text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    slug              text        NOT NULL CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND char_length(slug) <= 100),
    description       text        CHECK (char_length(description) <= 2000),
    status            text        NOT NULL DEFAULT 'DRAFT'
                                  CHECK (status IN ('DRAFT', 'PUBLISHED', 'ARCHIVED')),
    active_version_id uuid,
    latest_version    integer     NOT NULL DEFAULT 0 CHECK (latest_version >= 0),
    revision          bigint      NOT NULL DEFAULT 1,
    labels            text[]      NOT NULL DEFAULT '{}',
    intents           text[]      NOT NULL DEFAULT '{}',
    language_codes    text[]      NOT NULL DEFAULT '{}',
    embedding_key     text,
    created_by_id     text        NOT NULL,
    updated_by_id     text        NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CONSTRAINT scripts_tenant_slug_key UNIQUE (tenant_id, slug),
    -- lets script_versions and script_runs reference (id, tenant_id) so a child row
    -- can never belong to another tenant than its script
    CONSTRAINT scripts_id_tenant_key UNIQUE (id, tenant_id)
);
-- GET /scripts: newest first, keyset on (created_at, id)
CREATE INDEX scripts_tenant_created_idx ON scripts (tenant_id, created_at DESC, id DESC);
CREATE INDEX scripts_tenant_status_created_idx ON scripts (tenant_id, status, created_at DESC, id DESC);

CREATE TABLE script_versions (
    id            uuid        PRIMARY KEY,
    script_id     uuid        NOT NULL,
    tenant_id     text        NOT NULL,
    version       integer     NOT NULL CHECK (version >= 1),
    graph_json    jsonb       NOT NULL CHECK (jsonb_typeof(graph_json) = 'object'),
    variables_def jsonb,
    changelog     text,
    is_published  boolean     NOT NULL DEFAULT false,
    created_by_id text        NOT NULL,
    created_at    timestamptz NOT NULL,
    CONSTRAINT script_versions_script_fk FOREIGN KEY (script_id, tenant_id)
        REFERENCES scripts (id, tenant_id) ON DELETE CASCADE,
    -- GET /scripts/:id/versions: highest first, and the lookup by number
    CONSTRAINT script_versions_script_version_key UNIQUE (script_id, version),
    CONSTRAINT script_versions_id_script_key UNIQUE (id, script_id)
);

ALTER TABLE scripts
    ADD CONSTRAINT scripts_active_version_fk FOREIGN KEY (active_version_id, id)
        REFERENCES script_versions (id, script_id) DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE script_audit_logs (
    id         uuid        PRIMARY KEY,
    script_id  uuid        NOT NULL,
    tenant_id  text        NOT NULL,
    action     text        NOT NULL CHECK (action IN ('CREATE', 'UPDATE', 'PUBLISH', 'ROLLBACK', 'ARCHIVE')),
    version    integer     NOT NULL CHECK (version >= 0),
    actor_id   text        NOT NULL,
    diff_json  jsonb,
    note       text,
    created_at timestamptz NOT NULL,
    CONSTRAINT script_audit_logs_script_fk FOREIGN KEY (script_id, tenant_id)
        REFERENCES scripts (id, tenant_id) ON DELETE CASCADE
);
-- GET /scripts/:id/audit: newest first, keyset on (created_at, id)
CREATE INDEX script_audit_logs_script_created_idx
    ON script_audit_logs (script_id, created_at DESC, id DESC);

CREATE TABLE script_runs (
    id             uuid        PRIMARY KEY,
    tenant_id      text        NOT NULL,
    script_id      uuid        NOT NULL,
    version        integer     NOT NULL,
    started_by_id  text,
    connector_type text,
    connector_key  text,
    status         text        NOT NULL DEFAULT 'RUNNING'
                               CHECK (status IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    started_at     timestamptz NOT NULL,
    ended_at       timestamptz,
    CONSTRAINT script_runs_script_fk FOREIGN KEY (script_id, tenant_id)
        REFERENCES scripts (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT script_runs_version_fk FOREIGN KEY (script_id, version)
        REFERENCES script_versions (script_id, version) ON DELETE CASCADE,
    CONSTRAINT script_runs_ended_matches_status CHECK ((status = 'RUNNING') = (ended_at IS NULL))
);
-- GET /runs: newest started_at first, optionally by script and status
CREATE INDEX script_runs_tenant_started_idx ON script_runs (tenant_id, started_at DESC, id DESC);
CREATE INDEX script_runs_tenant_script_started_idx
    ON script_runs (tenant_id, script_id, started_at DESC, id DESC);
CREATE INDEX script_runs_tenant_status_started_idx
    ON script_runs (tenant_id, status, started_at DESC, id DESC);

CREATE TABLE run_variables (
    run_id     uuid        NOT NULL REFERENCES script_runs (id) ON DELETE CASCADE,
    key        text        NOT NULL CHECK (key ~ '^[A-Za-z0-9_.:-]{1,200}$'),
    str_val    text,
    num_val    double precision CHECK (num_val NOT IN ('NaN', 'Infinity', '-Infinity')),
    bool_val   boolean,
    json_val   jsonb       CHECK (json_val IS NULL OR jsonb_typeof(json_val) <> 'null'),
    updated_at timestamptz NOT NULL,
    CONSTRAINT run_variables_run_key_key PRIMARY KEY (run_id, key),
    CONSTRAINT run_variables_exactly_one_value
        CHECK (num_nonnulls(str_val, num_val, bool_val, json_val) = 1)
);

CREATE TABLE command_outbox (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    command         text        NOT NULL,
    correlation_id  uuid        NOT NULL,
    actor_user_id   text        NOT NULL,
    created_by_id   text        NOT NULL,
    context         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(context) = 'object'),
    payload         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    status          text        NOT NULL DEFAULT 'PENDING'
                                CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    lease_until     timestamptz,
    last_error      text,
    result          jsonb,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    CONSTRAINT command_outbox_tenant_correlation_key UNIQUE (tenant_id, correlation_id),
    CONSTRAINT command_outbox_lease_matches_status CHECK ((status = 'PROCESSING') = (lease_until IS NOT NULL))
);
-- the claim query: due PENDING rows, oldest first; and expired leases
CREATE INDEX command_outbox_pending_idx ON command_outbox (next_attempt_at) WHERE status = 'PENDING';
CREATE INDEX command_outbox_processing_idx ON command_outbox (lease_until) WHERE status = 'PROCESSING';

CREATE TABLE idempotency_keys (
    tenant_id        text        NOT NULL,
    method           text        NOT NULL,
    path             text        NOT NULL,
    key              text        NOT NULL,
    fingerprint      bytea       NOT NULL,
    state            text        NOT NULL CHECK (state IN ('IN_FLIGHT', 'COMPLETED')),
    response_status  smallint,
    response_headers jsonb,
    response_body    bytea,
    locked_until     timestamptz,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (tenant_id, method, path, key),
    CONSTRAINT idempotency_keys_completed_has_response
        CHECK (state <> 'COMPLETED' OR (response_status IS NOT NULL AND response_body IS NOT NULL))
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

CREATE TABLE events (
    id             bigserial   PRIMARY KEY,
    tenant_id      text        NOT NULL,
    name           text        NOT NULL,
    correlation_id text,
    success        boolean     NOT NULL,
    payload        jsonb       NOT NULL,
    occurred_at    timestamptz NOT NULL
);
-- replay after Last-Event-ID for one tenant, optionally one correlation; purge by age
CREATE INDEX events_tenant_id_idx ON events (tenant_id, id);
CREATE INDEX events_tenant_correlation_id_idx ON events (tenant_id, correlation_id, id);
CREATE INDEX events_occurred_idx ON events (occurred_at);
