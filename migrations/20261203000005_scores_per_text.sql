-- A document's score is kept per text it was computed on (checksum in the key), and each
-- scoring job records the text it covers: a job whose documents were edited since, or whose
-- texts were cut differently (a dataset's records and a selection of the same documents), reads
-- the scores of its own texts, never another job's.
ALTER TABLE document_scores DROP CONSTRAINT document_scores_pkey;
ALTER TABLE document_scores ADD PRIMARY KEY (model_name, version, document_id, checksum);
ALTER TABLE scoring_job_documents ADD COLUMN checksum TEXT;
