-- Large binary artifacts (model weights, training checkpoints) stored as ordered chunks, each
-- far under bytea's 1 GB limit (src/artifacts.rs). Rows written before this migration keep their
-- bytes in the old columns, which become nullable; new rows reference an artifact instead.
CREATE TABLE artifact_chunks (
    artifact_id UUID   NOT NULL,
    seq         INT    NOT NULL,
    bytes       BYTEA  NOT NULL,
    PRIMARY KEY (artifact_id, seq)
);
-- Weights do not compress: store chunks out of line without trying.
ALTER TABLE artifact_chunks ALTER COLUMN bytes SET STORAGE EXTERNAL;

ALTER TABLE model_versions ALTER COLUMN weights DROP NOT NULL;
ALTER TABLE model_versions ADD COLUMN weights_artifact UUID;
ALTER TABLE model_versions ADD COLUMN weights_size BIGINT;

ALTER TABLE training_checkpoints ALTER COLUMN state DROP NOT NULL;
ALTER TABLE training_checkpoints ALTER COLUMN best_weights DROP NOT NULL;
ALTER TABLE training_checkpoints ADD COLUMN state_artifact UUID;
ALTER TABLE training_checkpoints ADD COLUMN best_weights_artifact UUID;
