-- Batch scoring and evaluations (issue 10).

-- A model version's scores, shared by every scoring job: unique per (model, version, document).
-- `checksum` is that of the text scored; a document whose text changed since is scored again.
CREATE TABLE document_scores (
    model_name   TEXT        NOT NULL,
    version      INTEGER     NOT NULL,
    document_id  BIGINT      NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    checksum     TEXT        NOT NULL,
    -- One probability per label, in the version's label order.
    scores       REAL[]      NOT NULL,
    scored_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version, document_id)
);

CREATE TABLE evaluations (
    id            UUID PRIMARY KEY,
    model_name    TEXT        NOT NULL,
    versions      INTEGER[]   NOT NULL,
    dataset_id    UUID        NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    split         TEXT        NOT NULL,
    status        TEXT        NOT NULL DEFAULT 'scoring',
    -- Set when a training run's gated auto_promote asked for this evaluation (one per run).
    run_id        UUID UNIQUE,
    -- {candidate, against, margin, metric} and, once decided, {decision, reason}.
    promotion     JSONB,
    -- Per version: metrics at stored and tuned thresholds, counts.
    results       JSONB,
    disagreements INTEGER,
    evaluate_job_id TEXT,
    error         TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ,
    CHECK (status IN ('scoring', 'evaluating', 'done', 'failed', 'cancelled'))
);
CREATE INDEX evaluations_created ON evaluations (created_at DESC);

-- Records of an evaluation on which the versions' positive labels differ.
CREATE TABLE evaluation_disagreements (
    evaluation_id UUID    NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    document_id   BIGINT  NOT NULL,
    source        TEXT    NOT NULL,
    external_id   TEXT    NOT NULL,
    text          TEXT    NOT NULL,
    -- The dataset's consensus labels (label -> 0/1/null).
    labels        JSONB   NOT NULL,
    -- version -> {positive_labels, scores}.
    predictions   JSONB   NOT NULL,
    PRIMARY KEY (evaluation_id, position)
);

CREATE TABLE scoring_jobs (
    id               UUID PRIMARY KEY,
    model_name       TEXT        NOT NULL,
    version          INTEGER     NOT NULL,
    labels           TEXT[]      NOT NULL,
    -- What positive labels are decided with: the version's stored thresholds or the request's.
    thresholds       REAL[]      NOT NULL,
    threshold_source TEXT        NOT NULL CHECK (threshold_source IN ('stored', 'request')),
    -- {"selection": {...}} or {"dataset_id": ..., "split": ...}, as requested.
    request          JSONB       NOT NULL,
    evaluation_id    UUID REFERENCES evaluations (id) ON DELETE CASCADE,
    status           TEXT        NOT NULL DEFAULT 'pending',
    plan_job_id      TEXT,
    error            TEXT,
    chunks_total     INTEGER     NOT NULL DEFAULT 0,
    chunks_done      INTEGER     NOT NULL DEFAULT 0,
    documents_total  BIGINT      NOT NULL DEFAULT 0,
    excluded_empty_text BIGINT   NOT NULL DEFAULT 0,
    -- Documents this job scored, and documents whose score for this version was already stored.
    scored           BIGINT      NOT NULL DEFAULT 0,
    reused           BIGINT      NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    CHECK (status IN ('pending', 'planning', 'scoring', 'done', 'failed', 'cancelled'))
);
CREATE INDEX scoring_jobs_created ON scoring_jobs (created_at DESC);
CREATE INDEX scoring_jobs_evaluation ON scoring_jobs (evaluation_id);

-- Every document a scoring job covers, in a stable order (results are paged by position).
CREATE TABLE scoring_job_documents (
    scoring_job_id UUID    NOT NULL REFERENCES scoring_jobs (id) ON DELETE CASCADE,
    position       INTEGER NOT NULL,
    document_id    BIGINT  NOT NULL,
    PRIMARY KEY (scoring_job_id, position)
);

-- The texts one `score` chunk job scores (only those missing a score at plan time).
CREATE TABLE scoring_chunks (
    scoring_job_id UUID     NOT NULL REFERENCES scoring_jobs (id) ON DELETE CASCADE,
    chunk_no       INTEGER  NOT NULL,
    document_ids   BIGINT[] NOT NULL,
    checksums      TEXT[]   NOT NULL,
    texts          TEXT[]   NOT NULL,
    done           BOOLEAN  NOT NULL DEFAULT false,
    PRIMARY KEY (scoring_job_id, chunk_no)
);

-- Jobs that belong to a scoring job (progress, cancel).
ALTER TABLE job_info ADD COLUMN scoring_job_id UUID;
CREATE INDEX job_info_scoring_job ON job_info (scoring_job_id) WHERE scoring_job_id IS NOT NULL;

-- A training run's auto_promote may require an evaluation: {dataset_id, split, margin}.
ALTER TABLE training_runs ADD COLUMN promotion_gate JSONB;
