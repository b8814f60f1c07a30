-- A finished run's validation metrics at its best epoch with the tuned thresholds (as on its
-- model version), or {"validation_split": "empty", "rows": 0} when the validation split had no
-- annotated record: then no validation figure exists, early stopping followed the training
-- loss and every threshold is 0.5.
ALTER TABLE training_runs ADD COLUMN validation_metrics JSONB;
