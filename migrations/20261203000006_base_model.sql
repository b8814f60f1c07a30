-- A finetune's starting checkpoint: a `type = "local"` embedding model of embedding_models.toml
-- (a BERT-family folder). NULL for head runs and for runs created before it could be chosen
-- (they started from local_model.dir).
ALTER TABLE training_runs ADD COLUMN base_model TEXT;
