#!/usr/bin/env bash
# EXPLAIN (ANALYZE, BUFFERS) of the lookups issue 18 rewrote, before and after, on N rows
# bulk-loaded after statistics were taken at 20 rows (this machine runs autovacuum off):
# an embed batch's stored-vector lookup (1,024 checksums) and a results page near the end.
# Usage: benches/scale/explain.sh [N] (default 300000); uses and drops database trainyard_explain.
set -euo pipefail
N="${1:-300000}"
ADMIN="postgres://postgres@127.0.0.1:5432/postgres"
DB=trainyard_explain
URL="postgres://postgres@127.0.0.1:5432/$DB"
psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
trap 'psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"' EXIT
psql "$URL" -q -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE embeddings (model TEXT NOT NULL, dimensions INTEGER NOT NULL, checksum TEXT NOT NULL,
  vector BYTEA NOT NULL, PRIMARY KEY (model, dimensions, checksum));
CREATE TABLE documents (id BIGINT PRIMARY KEY, source TEXT NOT NULL, external_id TEXT NOT NULL);
CREATE TABLE scoring_job_documents (scoring_job_id UUID NOT NULL, position INTEGER NOT NULL,
  document_id BIGINT NOT NULL, checksum TEXT, PRIMARY KEY (scoring_job_id, position));
CREATE TABLE document_scores (model_name TEXT NOT NULL, version INTEGER NOT NULL, document_id BIGINT NOT NULL,
  checksum TEXT NOT NULL, scores REAL[] NOT NULL, PRIMARY KEY (model_name, version, document_id, checksum));
-- Statistics of 20 rows, then the bulk load.
INSERT INTO embeddings SELECT 'tiny', 64, md5(i::text), decode(repeat('00', 256), 'hex') FROM generate_series(1, 20) i;
INSERT INTO documents SELECT i, 'src', 'doc-' || i FROM generate_series(1, 20) i;
INSERT INTO scoring_job_documents SELECT '00000000-0000-0000-0000-000000000001', i - 1, i, md5(i::text) FROM generate_series(1, 20) i;
INSERT INTO document_scores SELECT 'm', 1, i, md5(i::text), ARRAY[0.5]::real[] FROM generate_series(1, 20) i;
ANALYZE;
INSERT INTO embeddings SELECT 'tiny', 64, md5(i::text), decode(repeat('00', 256), 'hex') FROM generate_series(21, $N) i;
INSERT INTO documents SELECT i, 'src', 'doc-' || i FROM generate_series(21, $N) i;
INSERT INTO scoring_job_documents SELECT '00000000-0000-0000-0000-000000000001', i - 1, i, md5(i::text) FROM generate_series(21, $N) i;
INSERT INTO document_scores SELECT 'm', 1, i, md5(i::text), ARRAY[0.5]::real[] FROM generate_series(21, $N) i;
SQL
explain() { echo; echo "== $1"; psql "$URL" -qAt -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $2"; }
# The batch is a bound parameter, as trainyard binds it (a custom plan that knows its values).
prepared() {
  echo; echo "== $1"
  psql "$URL" -qAt <<PSQL 2>&1 | sed -E "s/'\{[0-9a-f,]{100,}\}'/'{1,024 checksums}'/"
SELECT array_agg(md5(i::text))::text AS arr FROM generate_series($N - 1023, $N) i \gset
PREPARE q(text[]) AS $2;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE q(:'arr');
PSQL
}
prepared "before: embed batch lookup, checksum = ANY(\$1) (1,024 checksums, $N stored)" \
  "SELECT checksum FROM embeddings WHERE model = 'tiny' AND dimensions = 64 AND checksum = ANY(\$1)"
prepared "after: one LIMIT 1 lateral probe per checksum" \
  "SELECT c.checksum FROM unnest(\$1) AS c(checksum) CROSS JOIN LATERAL (SELECT 1 FROM embeddings e WHERE e.model = 'tiny' AND e.dimensions = 64 AND e.checksum = c.checksum LIMIT 1) AS hit"
page=$((N - 50))
explain "before: results page near the end (joins, ORDER BY position LIMIT 50 OFFSET $page)" \
  "SELECT m.position, d.source, s.scores FROM scoring_job_documents m JOIN documents d ON d.id = m.document_id
   JOIN document_scores s ON s.model_name = 'm' AND s.version = 1 AND s.document_id = m.document_id AND s.checksum = m.checksum
   WHERE m.scoring_job_id = '00000000-0000-0000-0000-000000000001' ORDER BY m.position LIMIT 50 OFFSET $page"
explain "after: positions [$page, $page + 50), each document and score a LIMIT 1 probe" \
  "SELECT m.position, d.source, s.scores FROM scoring_job_documents m
   CROSS JOIN LATERAL (SELECT source FROM documents WHERE id = m.document_id LIMIT 1) d
   CROSS JOIN LATERAL (SELECT scores FROM document_scores WHERE model_name = 'm' AND version = 1 AND document_id = m.document_id AND checksum = m.checksum LIMIT 1) s
   WHERE m.scoring_job_id = '00000000-0000-0000-0000-000000000001' AND m.position >= $page AND m.position < $page + 50 ORDER BY m.position"
