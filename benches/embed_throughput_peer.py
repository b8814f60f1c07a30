# Peer side of the embedding throughput benchmark: times sentence-transformers (all-MiniLM-L6-v2, or any encoder folder) on CPU over a sentence file and prints one JSON line.
"""Usage:
    python benches/embed_throughput_peer.py --sentences FILE [--threads N] [--batch-size 64] [--repeats 3]
                                            [--model-dir DIR] [--plain-transformers]

FILE has one sentence per line (see benches/make_sentences.py). The model is loaded offline
from DIR (default $TRAINYARD_LOCAL_MODEL_DIR) on CPU by sentence-transformers; a plain
`transformers` folder (no modules.json) gets its default: mean pooling, max_seq_length =
min(model_max_length, positions). Should sentence-transformers not load the folder (or with
--plain-transformers), the peer is `transformers` AutoModel + mean pooling over the attention
mask (input_ids and attention_mask only, truncation at 256 tokens, padding to the batch's
longest) in batches of --batch-size in the file's order. After a warm-up on the first 64 sentences, the whole file is
encoded `repeats` times with L2-normalised output and the best wall time is kept.
Output (stdout, one line):
    {"peer": "sentence-transformers" | "transformers", "sentences": n, "best_seconds": s, "sentences_per_second": x}
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


def transformers_encoder(model_dir: str, batch_size: int, max_tokens: int = 256):
    """`transformers` AutoModel + mean pooling + L2, the fallback peer: (encode(texts) -> array, name)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(model.config.pad_token_id)
    tokenizer.padding_side = "right"
    max_tokens = min(max_tokens, getattr(model.config, "max_position_embeddings", max_tokens))

    def encode(texts):
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(texts[start : start + batch_size], padding="longest", truncation=True,
                                max_length=max_tokens, return_tensors="pt")
                states = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
        return torch.cat(out).numpy()

    return encode, "transformers"


def main() -> int:
    ap = argparse.ArgumentParser(description="sentence-transformers peer for the embedding throughput benchmark")
    ap.add_argument("--sentences", required=True, help="text file, one sentence per line")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-dir", default=os.environ.get("TRAINYARD_LOCAL_MODEL_DIR"))
    ap.add_argument("--plain-transformers", action="store_true",
                    help="skip sentence-transformers: transformers AutoModel + mean pooling (the fallback)")
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
    try:
        if args.plain_transformers:
            raise RuntimeError("--plain-transformers")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(args.model_dir, device="cpu")
        model.eval()
        peer = "sentence-transformers"
        print(f"sentence-transformers, max_seq_length {model.max_seq_length}: {model}", file=sys.stderr)

        def encode(batch):
            with torch.inference_mode():
                return model.encode(
                    batch,
                    batch_size=args.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )

    except Exception as e:  # noqa: BLE001 - any failure to load: fall back to plain transformers
        print(f"sentence-transformers cannot load {args.model_dir} ({e!r}); using transformers AutoModel + mean pooling", file=sys.stderr)
        encode, peer = transformers_encoder(args.model_dir, args.batch_size)

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
                "peer": peer,
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
