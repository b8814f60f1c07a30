#!/usr/bin/env bash
# Fault check, run by hand: Postgres crashes (immediate stop, then WAL recovery) right after
# the third embed batch of a demo-sized build is committed, with `serve` and two workers
# running. Prints what survived: embeddings vs distinct checksums, batches, job attempts, and
# whether the processes are still up. Uses its own database (trainyard_crash) and port 8399.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TRAINYARD_ROOT"
bash scripts/setup.sh >/dev/null
bash scripts/fetch_demo_data.sh >/dev/null
BIN=$CARGO_TARGET_DIR/release/trainyard
PG=postgres://postgres@127.0.0.1:5432
psql $PG/postgres -qc "DROP DATABASE IF EXISTS trainyard_crash" 2>/dev/null; psql $PG/postgres -qc "CREATE DATABASE trainyard_crash"
export DATABASE_URL=$PG/trainyard_crash TRAINYARD_SERVER__LISTEN=127.0.0.1:8399 TRAINYARD_URL=http://127.0.0.1:8399
$BIN migrate >/dev/null; $BIN import $TRAINYARD_DATA_DIR/demo.jsonl | tail -1
$BIN serve > /tmp/crash-serve.log 2>&1 & S=$!
for i in 1 2; do TRAINYARD_LOCAL_MODEL__THREADS=1 $BIN worker --queues dataset_build,embed --concurrency 1 --name crash-$i > /tmp/crash-w$i.log 2>&1 & eval W$i=\$!; done
sleep 3
($BIN build-dataset --name crash --sources reviews,emails --labels spam,positive_sentiment --type multi_label > /tmp/crash-build.json 2>/tmp/crash-build.err &)
for i in $(seq 1 1500); do d=$(psql -tA $DATABASE_URL -c "select batches_done from datasets" 2>/dev/null); [ "${d:-0}" -ge 3 ] && break; sleep 0.1; done
echo "before crash: $(psql -tA $DATABASE_URL -c "select count(*) from embeddings") embeddings, batches done $(psql -tA $DATABASE_URL -c "select batches_done||'/'||batches_total from datasets")"
V=$(ls /etc/postgresql | head -n1)
pg_ctlcluster --skip-systemctl-redirect $V main stop -m immediate; echo "postgres stopped (immediate) at $(date +%T)"; sleep 3
pg_ctlcluster --skip-systemctl-redirect $V main start; echo "postgres started at $(date +%T)"
for i in $(seq 1 120); do st=$(psql -tA $DATABASE_URL -c "select status from datasets" 2>/dev/null); [ "$st" = ready ] && break; sleep 3; done
echo "dataset status: $st at $(date +%T)"
psql $DATABASE_URL -c "select count(*) rows, count(distinct checksum) distinct_checksums from embeddings"
psql $DATABASE_URL -c "select batches_done, batches_total, new_embeddings, reused_embeddings from datasets"
psql $DATABASE_URL -c "select count(distinct r.checksum) checksums_in_records, count(*) filter (where e.checksum is null) records_without_vector from dataset_records r left join embeddings e on e.checksum = r.checksum"
psql $DATABASE_URL -c "select job_type, status, attempts, count(*) from apalis.jobs group by 1,2,3 order by 1,2,3"
echo "serve alive: $(kill -0 $S && echo yes)  workers alive: $(kill -0 $W1 && echo yes) $(kill -0 $W2 && echo yes)"
curl -s $TRAINYARD_URL/api/v1/health | head -c 400; echo
kill $S $W1 $W2; wait 2>/dev/null
echo "logs: /tmp/crash-serve.log /tmp/crash-w1.log /tmp/crash-w2.log"
