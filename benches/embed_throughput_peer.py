# Peer side of the embedding throughput benchmark: times sentence-transformers all-MiniLM-L6-v2 on CPU over a sentence file and prints one JSON line.
"""Usage:
    python benches/embed_throughput_peer.py --sentences FILE [--threads N] [--batch-size 64] [--repeats 3]

FILE has one sentence per line (see benches/make_sentences.py). The model is loaded offline
from $TRAINYARD_LOCAL_MODEL_DIR on CPU. After a warm-up on the first 64 sentences, the whole
file is encoded `repeats` times with normalize_embeddings=True and the best wall time is kept.
Output (stdout, one line):
    {"peer": "sentence-transformers", "sentences": n, "best_seconds": s, "sentences_per_second": x}
Everything else (progress, library noise) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    ap = argparse.ArgumentParser(description="sentence-transformers peer for the embedding throughput benchmark")
    ap.add_argument("--sentences", required=True, help="text file, one sentence per line")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-dir", default=os.environ.get("TRAINYARD_LOCAL_MODEL_DIR"))
    args = ap.parse_args()
    if not args.model_dir:
        ap.error("TRAINYARD_LOCAL_MODEL_DIR is not set (source scripts/env.sh) and --model-dir not given")
    if args.threads < 1 or args.batch_size < 1 or args.repeats < 1:
        ap.error("--threads, --batch-size and --repeats must be >= 1")

    with open(args.sentences, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f]
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        ap.error(f"{args.sentences} has no sentences")

    import torch

    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model_dir, device="cpu")
    model.eval()

    def encode(batch):
        with torch.inference_mode():
            return model.encode(
                batch,
                batch_size=args.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    encode(sentences[:64])  # warm-up

    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        emb = encode(sentences)
        dt = time.perf_counter() - t0
        times.append(dt)
        assert emb.shape[0] == len(sentences)
        print(f"repeat {i + 1}/{args.repeats}: {dt:.3f}s ({len(sentences) / dt:.1f} sentences/s)", file=sys.stderr)

    best = min(times)
    print(
        json.dumps(
            {
                "peer": "sentence-transformers",
                "sentences": len(sentences),
                "best_seconds": round(best, 6),
                "sentences_per_second": round(len(sentences) / best, 3),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
