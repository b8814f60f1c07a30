-- Labelling by people through the web app (src/review/labelling.rs): versioned guidelines per
-- label, how many people must answer a source's documents, short leases so that two people
-- never get the same document at once, and each person's answers per queue.

-- One text per label and version; a new text is a new version (1, 2, ...).
CREATE TABLE guidelines (
    label       TEXT        NOT NULL,
    version     INTEGER     NOT NULL CHECK (version >= 1),
    text        TEXT        NOT NULL,
    author      TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (label, version)
);

-- The guideline version a vote was made under (NULL: none was shown or none existed).
ALTER TABLE annotations ADD COLUMN guideline_version INTEGER;

-- Per source: how many people must answer a document before it leaves a labelling queue.
-- A source without a row needs one.
CREATE TABLE source_settings (
    source      TEXT        PRIMARY KEY,
    overlap     INTEGER     NOT NULL CHECK (overlap BETWEEN 1 AND 10),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who holds a document now. At most one person per document; a lease past `expires_at` is
-- free for anyone. `queue` names the labelling queue (model, strategy, source, label) it was
-- taken in, so that taking the next one releases the previous one of the same queue.
CREATE TABLE label_leases (
    document_id  BIGINT      PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    annotator    TEXT        NOT NULL,
    queue        TEXT        NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX label_leases_holder ON label_leases (annotator, queue);

-- Each person's answers in a queue: a decision (its annotations carry `annotated_at`) or a skip.
-- A document leaves the queue once `overlap` people decided it there; a person never gets a
-- document they answered. Undo deletes the latest answer and its annotations.
CREATE TABLE label_answers (
    id           BIGSERIAL   PRIMARY KEY,
    queue        TEXT        NOT NULL,
    document_id  BIGINT      NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    annotator    TEXT        NOT NULL,
    skipped      BOOLEAN     NOT NULL,
    labels       JSONB       NOT NULL DEFAULT '{}'::jsonb,
    annotated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (queue, document_id, annotator)
);
CREATE INDEX label_answers_document ON label_answers (queue, document_id) WHERE NOT skipped;
CREATE INDEX label_answers_latest ON label_answers (queue, annotator, id DESC);

-- Labelling reads a document's reason in the ranking it was given from.
CREATE INDEX review_ranking_items_document ON review_ranking_items (ranking_id, document_id);

-- Where a search of a ranking starts in a queue: every position before it is decided by
-- `overlap` people (src/review/labelling.rs, `cursor`). Moved forward as documents are decided;
-- an undo in the queue resets it.
CREATE TABLE label_cursors (
    ranking_id  BIGINT  NOT NULL REFERENCES review_rankings (id) ON DELETE CASCADE,
    queue       TEXT    NOT NULL,
    overlap     INTEGER NOT NULL,
    position    BIGINT  NOT NULL,
    PRIMARY KEY (ranking_id, queue, overlap)
);
