-- trainyard's own tables. apalis's tables live in schema `apalis` with their own migrations.

CREATE TABLE documents (
    id           BIGSERIAL PRIMARY KEY,
    source       TEXT        NOT NULL,
    external_id  TEXT        NOT NULL,
    title        TEXT,
    description  TEXT,
    tags         TEXT[]      NOT NULL DEFAULT '{}',
    body         TEXT,
    metadata     JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source, external_id)
);

-- One row per (document, annotator, label, time): an annotator's history is kept; consensus
-- uses each annotator's latest value per label.
CREATE TABLE annotations (
    id            BIGSERIAL PRIMARY KEY,
    document_id   BIGINT      NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    annotator     TEXT        NOT NULL,
    label         TEXT        NOT NULL,
    value         BOOLEAN     NOT NULL,
    annotated_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (document_id, annotator, label, annotated_at)
);
CREATE INDEX annotations_document ON annotations (document_id);

-- Embeddings are shared by all datasets: unique per (model, dimensions, checksum).
-- vector: little-endian f32, `dimensions` of them.
CREATE TABLE embeddings (
    model       TEXT        NOT NULL,
    dimensions  INTEGER     NOT NULL,
    checksum    TEXT        NOT NULL,
    vector      BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model, dimensions, checksum),
    CHECK (octet_length(vector) = 4 * dimensions)
);

CREATE TABLE datasets (
    id                  UUID PRIMARY KEY,
    name                TEXT        NOT NULL,
    description         TEXT        NOT NULL DEFAULT '',
    status              TEXT        NOT NULL DEFAULT 'pending',
    embedding_model     TEXT        NOT NULL,
    dimensions          INTEGER     NOT NULL,
    request             JSONB       NOT NULL,
    build_job_id        TEXT,
    error               TEXT,
    batches_total       INTEGER     NOT NULL DEFAULT 0,
    batches_done        INTEGER     NOT NULL DEFAULT 0,
    new_embeddings      INTEGER     NOT NULL DEFAULT 0,
    reused_embeddings   INTEGER     NOT NULL DEFAULT 0,
    stats               JSONB,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    ready_at            TIMESTAMPTZ,
    CHECK (status IN ('pending', 'building', 'embedding', 'ready', 'failed', 'cancelled'))
);
CREATE INDEX datasets_created ON datasets (created_at DESC);

CREATE TABLE dataset_records (
    dataset_id   UUID    NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    document_id  BIGINT  NOT NULL,
    source       TEXT    NOT NULL,
    external_id  TEXT    NOT NULL,
    checksum     TEXT    NOT NULL,
    text         TEXT    NOT NULL,
    split        TEXT    NOT NULL CHECK (split IN ('train', 'validation', 'test')),
    -- label -> 0/1, or null where the record's source did not annotate it (masked).
    labels       JSONB   NOT NULL,
    -- label -> {"positive": n, "negative": n} of the annotators' latest votes.
    votes        JSONB   NOT NULL,
    disagreement BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (dataset_id, position),
    UNIQUE (dataset_id, document_id)
);

-- The texts one embed job embeds; the job's arguments only name (dataset, batch_no).
CREATE TABLE embed_batches (
    dataset_id  UUID    NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    batch_no    INTEGER NOT NULL,
    checksums   TEXT[]  NOT NULL,
    texts       TEXT[]  NOT NULL,
    done        BOOLEAN NOT NULL DEFAULT false,
    new_count   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dataset_id, batch_no)
);

-- What apalis does not keep about a job: kind, progress, cancellation, what it belongs to.
CREATE TABLE job_info (
    job_id            TEXT PRIMARY KEY,
    kind              TEXT        NOT NULL,
    dataset_id        UUID,
    progress_done     BIGINT      NOT NULL DEFAULT 0,
    progress_total    BIGINT      NOT NULL DEFAULT 0,
    cancel_requested  BOOLEAN     NOT NULL DEFAULT false,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX job_info_kind ON job_info (kind, created_at DESC);

-- Retry policy per queue, read by the backoff trigger below; workers write their settings here.
CREATE TABLE queue_policy (
    queue        TEXT PRIMARY KEY,
    base_secs    DOUBLE PRECISION NOT NULL,
    max_secs     DOUBLE PRECISION NOT NULL
);
