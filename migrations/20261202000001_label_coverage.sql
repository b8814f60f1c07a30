-- Per model version and label: which sources annotated it in the training split, and how many
-- positives and negatives each gave. A label a source never annotated was masked there; its
-- score on that source's texts is an extrapolation, and clients can see it here.
ALTER TABLE model_versions ADD COLUMN label_coverage JSONB;
