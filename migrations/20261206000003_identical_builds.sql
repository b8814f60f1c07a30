-- A dataset remembers the corpus generation it was built at: a later build of the same request
-- at the same generation copies its records instead of reading the corpus again (issue 18).
ALTER TABLE datasets ADD COLUMN corpus_generation BIGINT;
