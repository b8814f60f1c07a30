-- The corpus and embeddings generations become the sum of 16 shard rows. A writing
-- transaction bumps only its backend's shard (pg_backend_pid() % 16), so concurrent writers
-- (imports, annotators' votes, dataset builds) no longer queue on one row lock held until
-- their commit. The sum read in a snapshot still grows with every committed write, so it
-- still names exactly what the snapshot sees (a later snapshot sees a superset of commits).
ALTER TABLE corpus_generations ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE corpus_generations DROP CONSTRAINT corpus_generations_pkey;
ALTER TABLE corpus_generations ADD PRIMARY KEY (scope, shard);
INSERT INTO corpus_generations (scope, shard, n)
SELECT g.scope, s.shard, 0
FROM (SELECT DISTINCT scope FROM corpus_generations) g
CROSS JOIN generate_series(1, 15) AS s(shard);

CREATE OR REPLACE FUNCTION corpus_generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE corpus_generations SET n = n + 1
    WHERE scope = TG_ARGV[0] AND shard = pg_backend_pid() % 16;
    RETURN NULL;
END
$$;
