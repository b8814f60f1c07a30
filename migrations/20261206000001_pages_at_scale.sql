-- Pages whose cost does not grow with the corpus (issue 18).

-- A record's rank inside its split, in record order: a page of one split at any offset is an
-- index range (dataset_id, split, split_position), not a walk over the records before it.
ALTER TABLE dataset_records ADD COLUMN split_position INTEGER;
UPDATE dataset_records r SET split_position = n.rank
FROM (SELECT dataset_id, position,
             (row_number() OVER (PARTITION BY dataset_id, split ORDER BY position) - 1)::int AS rank
      FROM dataset_records) n
WHERE r.dataset_id = n.dataset_id AND r.position = n.position;
CREATE INDEX dataset_records_split_page ON dataset_records (dataset_id, split, split_position);
