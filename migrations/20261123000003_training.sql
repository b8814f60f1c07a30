-- Training runs, their per-epoch metrics and checkpoints; the model registry.

CREATE TABLE training_runs (
    id               UUID PRIMARY KEY,
    dataset_id       UUID        NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    model_name       TEXT        NOT NULL,
    mode             TEXT        NOT NULL CHECK (mode IN ('head', 'finetune')),
    task             TEXT        NOT NULL,
    labels           JSONB       NOT NULL,
    hyperparameters  JSONB       NOT NULL,
    device           TEXT        NOT NULL DEFAULT 'auto',
    device_used      TEXT,
    auto_promote     BOOLEAN     NOT NULL DEFAULT false,
    -- Webhook settings of this run (url, authorization), if any.
    webhook          JSONB,
    status           TEXT        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    job_id           TEXT,
    error            TEXT,
    global_step      BIGINT      NOT NULL DEFAULT 0,
    total_steps      BIGINT      NOT NULL DEFAULT 0,
    epoch            INTEGER     NOT NULL DEFAULT 0,
    total_epochs     INTEGER     NOT NULL DEFAULT 0,
    samples_per_sec  DOUBLE PRECISION,
    best_epoch       INTEGER,
    best_metric      DOUBLE PRECISION,
    test_metrics     JSONB,
    thresholds       JSONB,
    telemetry        JSONB,
    resumed_from     INTEGER,
    model_version    INTEGER,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX training_runs_created ON training_runs (created_at DESC);

-- One row per completed epoch: the primary key makes a re-run epoch impossible to record twice.
CREATE TABLE training_epochs (
    run_id      UUID             NOT NULL REFERENCES training_runs (id) ON DELETE CASCADE,
    epoch       INTEGER          NOT NULL,
    global_step BIGINT           NOT NULL,
    train_loss  DOUBLE PRECISION NOT NULL,
    val_loss    DOUBLE PRECISION,
    metrics     JSONB            NOT NULL,
    created_at  TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, epoch)
);

-- The last completed epoch's full state (weights + optimizer) and the best weights so far.
CREATE TABLE training_checkpoints (
    run_id        UUID PRIMARY KEY REFERENCES training_runs (id) ON DELETE CASCADE,
    epoch         INTEGER          NOT NULL,
    state         BYTEA            NOT NULL,
    best_weights  BYTEA            NOT NULL,
    best_epoch    INTEGER          NOT NULL,
    best_metric   DOUBLE PRECISION NOT NULL,
    bad_epochs    INTEGER          NOT NULL,
    updated_at    TIMESTAMPTZ      NOT NULL DEFAULT now()
);

CREATE TABLE models (
    name            TEXT PRIMARY KEY,
    served_version  INTEGER,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE model_versions (
    name          TEXT        NOT NULL REFERENCES models (name) ON DELETE CASCADE,
    version       INTEGER     NOT NULL,
    run_id        UUID        UNIQUE,
    dataset_id    UUID,
    -- ClassifierSpec: mode, task, labels, shape.
    spec          JSONB       NOT NULL,
    embedding_model TEXT      NOT NULL,
    thresholds    JSONB       NOT NULL,
    -- {"validation": Metrics, "test": Metrics}
    metrics       JSONB       NOT NULL,
    weights       BYTEA       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Every promotion and rollback, newest last: rollback walks this history back.
CREATE TABLE model_promotions (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT        NOT NULL REFERENCES models (name) ON DELETE CASCADE,
    version     INTEGER     NOT NULL,
    action      TEXT        NOT NULL CHECK (action IN ('promote', 'rollback', 'auto_promote')),
    previous    INTEGER,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Weights and optimizer state are float32 noise to a compressor: store them uncompressed
-- (pglz spent ~15 s per 360 MB checkpoint trying, and gained nothing).
ALTER TABLE training_checkpoints ALTER COLUMN state SET STORAGE EXTERNAL;
ALTER TABLE training_checkpoints ALTER COLUMN best_weights SET STORAGE EXTERNAL;
ALTER TABLE model_versions ALTER COLUMN weights SET STORAGE EXTERNAL;
