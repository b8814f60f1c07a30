-- The review queue's rankings, computed once per (model version, strategy, source, label, and
-- the state of what they were computed from) and kept: a page reads a range of positions of a
-- stored ranking instead of ranking the corpus again.

-- Generations of what rankings (and dataset builds: datasets.corpus_generation) are computed
-- from, read in O(1) per request (never a count over
-- a growing table). Each is bumped by a statement-level trigger inside the writing
-- transaction, so a ranking computed in one snapshot is labelled with exactly the generations
-- that snapshot sees.
--   corpus:     documents and annotations (texts, sources, votes)
--   embeddings: a dataset changed status (embeddings are written only by a dataset's embed
--               jobs, and every build ends in a status change)
CREATE TABLE corpus_generations (
    scope  TEXT PRIMARY KEY,
    n      BIGINT NOT NULL DEFAULT 0
);
INSERT INTO corpus_generations (scope) VALUES ('corpus'), ('embeddings');

-- Stored scores, per model version (a scoring job of one version leaves the others' rankings).
CREATE TABLE review_score_generations (
    model_name  TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    n           BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (model_name, version)
);

CREATE FUNCTION corpus_generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE corpus_generations SET n = n + 1 WHERE scope = TG_ARGV[0];
    RETURN NULL;
END
$$;

CREATE FUNCTION review_score_generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Sorted, so that two statements over the same versions lock their rows in one order.
    INSERT INTO review_score_generations AS g (model_name, version, n)
    SELECT DISTINCT model_name, version, 1 FROM changed_scores ORDER BY 1, 2
    ON CONFLICT (model_name, version) DO UPDATE SET n = g.n + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER documents_review_generation
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON documents
    FOR EACH STATEMENT EXECUTE FUNCTION corpus_generation_bump('corpus');
CREATE TRIGGER annotations_review_generation
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON annotations
    FOR EACH STATEMENT EXECUTE FUNCTION corpus_generation_bump('corpus');
CREATE TRIGGER datasets_review_generation
    AFTER UPDATE OF status ON datasets
    FOR EACH STATEMENT EXECUTE FUNCTION corpus_generation_bump('embeddings');
-- A transition table allows one event per trigger: one trigger per event. Deletions come only
-- from deleted documents (ON DELETE CASCADE), which bump `corpus`.
CREATE TRIGGER document_scores_insert_review_generation
    AFTER INSERT ON document_scores REFERENCING NEW TABLE AS changed_scores
    FOR EACH STATEMENT EXECUTE FUNCTION review_score_generation_bump();
CREATE TRIGGER document_scores_update_review_generation
    AFTER UPDATE ON document_scores REFERENCING NEW TABLE AS changed_scores
    FOR EACH STATEMENT EXECUTE FUNCTION review_score_generation_bump();

-- One ranking of the review queue. `source` and `label` are '' for "all" (a request's source
-- and label are never empty). `fingerprint` names the generations it was computed at (or, for
-- a `computing` row, those asked for). At most one `ready` and one `computing` row per key.
CREATE TABLE review_rankings (
    id                BIGSERIAL   PRIMARY KEY,
    model_name        TEXT        NOT NULL,
    version           INTEGER     NOT NULL,
    strategy          TEXT        NOT NULL,
    source            TEXT        NOT NULL,
    label             TEXT        NOT NULL,
    fingerprint       TEXT        NOT NULL,
    status            TEXT        NOT NULL,
    -- The `review_rank` job computing it (strategies ranked as a job).
    job_id            TEXT,
    total             BIGINT      NOT NULL DEFAULT 0,
    -- Counts, labels, uncovered/skipped labels and the hint, as the API shows them.
    summary           JSONB,
    error             TEXT,
    requested_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    computed_at       TIMESTAMPTZ,
    CHECK (status IN ('computing', 'ready', 'failed'))
);
CREATE UNIQUE INDEX review_rankings_one_ready
    ON review_rankings (model_name, version, strategy, source, label) WHERE status = 'ready';
CREATE UNIQUE INDEX review_rankings_one_computing
    ON review_rankings (model_name, version, strategy, source, label) WHERE status = 'computing';
CREATE INDEX review_rankings_key
    ON review_rankings (model_name, version, strategy, source, label, requested_at DESC);

-- A ranking's items in order: a page is `position >= offset ORDER BY position LIMIT n`.
CREATE TABLE review_ranking_items (
    ranking_id   BIGINT  NOT NULL REFERENCES review_rankings (id) ON DELETE CASCADE,
    position     BIGINT  NOT NULL,
    document_id  BIGINT  NOT NULL,
    reason       JSONB   NOT NULL,
    explanation  TEXT    NOT NULL,
    PRIMARY KEY (ranking_id, position)
);
