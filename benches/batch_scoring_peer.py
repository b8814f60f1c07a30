# Peer side of the batch-scoring benchmark: scores every document of one source the way an ML engineer would (psycopg + sentence-transformers + a torch MLP head, results COPYed back), one JSON line out.
"""Usage:
    python benches/batch_scoring_peer.py --database-url URL --source NAME
        [--threads 2] [--batch-size 32] [--labels 2] [--model-dir DIR]

What it does, in the order a notebook-turned-script would:
1. read: one `SELECT id, title, description, body, tags FROM documents WHERE source = %s
   ORDER BY id` with psycopg 3 (fetchall), and build each document's text with trainyard's
   rule (README "Datasets: the rules"): title, description and body each trimmed with runs of
   whitespace collapsed to one space, the non-empty ones joined with "\\n", non-empty tags
   appended as a last line "tags: a, b", the result cut to 100,000 characters; the checksum
   is the hex MD5 of the text's UTF-8 bytes. Documents with no text are skipped (trainyard
   excludes them too) and counted as `excluded_empty_text`.
2. encode: `SentenceTransformer(DIR).encode(texts, batch_size=32, convert_to_tensor=True)` on
   CPU with torch.set_num_threads(--threads) (the model directory's modules include
   Normalize, so the embeddings are L2-normalised as trainyard's are), then an MLP head of the
   same shapes as trainyard's: Linear(384, 256) -> ReLU -> Linear(256, L) -> sigmoid, L =
   --labels, in one call under torch.inference_mode(). encode() sorts the texts by length
   itself, so its batches are already length-bucketed.
3. write: one row per document into `peer_document_scores (document_id bigint primary key,
   checksum text, scores real[])` of the same database, with psycopg's COPY ... FROM STDIN
   (`cursor.copy()` + `write_row`) in one transaction: what a competent user writes for 100k
   rows (executemany would be one round trip per row unless pipelined). The table is created
   if absent and truncated before the clock starts.

The head's weights are random with a fixed seed: throughput does not depend on the values of
the weights, only on the shapes, so this is as fast as a trained head would be.

The clock starts after the Python imports (trainyard's workers are already running when its
job is posted) and covers connecting, reading, loading the model, encoding, the head, and
writing up to the commit. Output (stdout, one line):
    {"peer": "sentence-transformers", "texts": n, "seconds": s, "texts_per_second": r,
     "read_s": ..., "load_s": ..., "encode_s": ..., "write_s": ..., "excluded_empty_text": k,
     "threads": t, "batch_size": b, "labels": L}
(encode_s includes the head.) Everything else (progress, library noise) goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_TEXT_CHARS = 100_000
SEED = 1234
HIDDEN = 256
# Rust's char::is_whitespace (Unicode White_Space), which trainyard's split_whitespace uses;
# Python's str.split() would also split on U+001C..U+001F.
_WS = re.compile("[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def squash(part: str | None) -> str:
    return _WS.sub(" ", part).strip(" ") if part else ""


def combine_text(title, description, body, tags) -> str:
    lines = [p for p in (squash(title), squash(description), squash(body)) if p]
    tags = [t for t in (squash(t) for t in (tags or [])) if t]
    if tags:
        lines.append("tags: " + ", ".join(tags))
    return "\n".join(lines)[:MAX_TEXT_CHARS]


def main() -> int:
    ap = argparse.ArgumentParser(description="sentence-transformers peer for the batch-scoring benchmark")
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--source", required=True, help="score the documents of this source")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--batch-size", type=int, default=32, help="encode() batch size (its default, 32)")
    ap.add_argument("--labels", type=int, default=2, help="outputs of the head (default 2)")
    ap.add_argument("--model-dir", default=os.environ.get("TRAINYARD_LOCAL_MODEL_DIR"))
    args = ap.parse_args()
    if not args.database_url:
        ap.error("--database-url not given and DATABASE_URL not set")
    if not args.model_dir:
        ap.error("TRAINYARD_LOCAL_MODEL_DIR is not set (source scripts/env.sh) and --model-dir not given")
    if args.threads < 1 or args.batch_size < 1 or args.labels < 1:
        ap.error("--threads, --batch-size and --labels must be >= 1")

    import psycopg
    import torch

    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    with psycopg.connect(args.database_url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS peer_document_scores ("
            " document_id bigint PRIMARY KEY, checksum text NOT NULL, scores real[] NOT NULL)"
        )
        conn.execute("TRUNCATE peer_document_scores")
        conn.commit()

    t0 = time.perf_counter()
    with psycopg.connect(args.database_url) as conn:
        rows = conn.execute(
            "SELECT id, title, description, body, tags FROM documents WHERE source = %s ORDER BY id",
            (args.source,),
        ).fetchall()
        ids, texts, excluded = [], [], 0
        for doc_id, title, description, body, tags in rows:
            text = combine_text(title, description, body, tags)
            if text:
                ids.append(doc_id)
                texts.append(text)
            else:
                excluded += 1
        del rows
        checksums = [hashlib.md5(t.encode("utf-8")).hexdigest() for t in texts]
        t_read = time.perf_counter()
        print(f"read {len(texts)} texts ({excluded} empty) in {t_read - t0:.2f}s", file=sys.stderr)

        model = SentenceTransformer(args.model_dir, device="cpu")
        model.eval()
        # 384; sentence-transformers 6 renamed the method (the old name still works, with a warning).
        dim = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)()
        # Random head with a fixed seed (see the module docstring: speed does not depend on it).
        torch.manual_seed(SEED)
        head = torch.nn.Sequential(
            torch.nn.Linear(dim, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, args.labels)
        ).eval()
        t_load = time.perf_counter()

        with torch.inference_mode():
            emb = model.encode(
                texts, batch_size=args.batch_size, convert_to_tensor=True, show_progress_bar=False
            )
            scores = torch.sigmoid(head(emb)).tolist() if texts else []
        t_encode = time.perf_counter()
        print(f"encoded {len(texts)} texts in {t_encode - t_load:.2f}s", file=sys.stderr)

        with conn.cursor() as cur:
            with cur.copy("COPY peer_document_scores (document_id, checksum, scores) FROM STDIN") as copy:
                for row in zip(ids, checksums, scores):
                    copy.write_row(row)
        conn.commit()
    t_end = time.perf_counter()

    with psycopg.connect(args.database_url) as conn:
        stored = conn.execute("SELECT count(*) FROM peer_document_scores").fetchone()[0]
    if stored != len(texts):
        print(f"peer_document_scores holds {stored} rows, expected {len(texts)}", file=sys.stderr)
        return 1

    total = t_end - t0
    print(
        json.dumps(
            {
                "peer": "sentence-transformers",
                "texts": len(texts),
                "seconds": round(total, 3),
                "texts_per_second": round(len(texts) / total, 3) if total > 0 else None,
                "read_s": round(t_read - t0, 3),
                "load_s": round(t_load - t_read, 3),
                "encode_s": round(t_encode - t_load, 3),
                "write_s": round(t_end - t_encode, 3),
                "excluded_empty_text": excluded,
                "threads": args.threads,
                "batch_size": args.batch_size,
                "labels": args.labels,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
