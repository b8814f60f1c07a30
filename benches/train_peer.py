# Peer side of the fine-tuning benchmark: a plain PyTorch training loop over an encoder (MiniLM or any family's folder) + MLP head on CPU; prints one JSON line with samples/s.
"""Usage:
    python benches/train_peer.py --texts FILE [--steps 20] [--batch-size 16] [--max-tokens 128]
                                 [--threads 2] [--warmup 3] [--model-dir DIR]

The model is `transformers` AutoModel of the folder DIR (default $TRAINYARD_LOCAL_MODEL_DIR:
all-MiniLM-L6-v2; benches/encoder_families.sh passes each family's folder: BERT, RoBERTa,
XLM-RoBERTa, DistilBERT, MPNet, ModernBERT, DeBERTa-v2/v3), loaded offline, in train mode but
with every dropout of its config set to 0 (hidden_dropout_prob, attention_probs_dropout_prob,
DistilBERT's dropout/attention_dropout, ModernBERT's embedding/attention/mlp_dropout, ...):
trainyard's encoder has no dropout, so both sides do the same arithmetic. Only input_ids and
attention_mask go in (no token_type_ids: trainyard uses none, and DistilBERT/ModernBERT take
none), right-padded with the tokenizer's pad token (the config's pad_token_id when the
tokenizer names none). On top: mean pooling over the attention mask, L2 normalisation, MLP
head Linear(hidden,256) -> ReLU -> Linear(256,2); BCEWithLogits loss on random 0/1 targets
(fixed seed), torch.optim.AdamW(lr=2e-5, weight_decay=0.01) over encoder and head,
gradient-norm clipping at 1.0.

FILE has one text a line. Batches are `--batch-size` texts in file order (cycling), tokenised
per batch (inside the timed step, as a real training loop does) with truncation at
`--max-tokens` and padding to the longest text of the batch. After `--warmup` untimed steps,
`--steps` steps are timed. Output (stdout, one line):
    {"samples_per_sec": x, "steps": S, "batch_size": B, "model_type": T}
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

SEED = 1234
LABELS = 2


def main() -> int:
    ap = argparse.ArgumentParser(description="PyTorch peer for the fine-tuning throughput benchmark")
    ap.add_argument("--texts", required=True, help="text file, one text per line")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--model-dir", default=os.environ.get("TRAINYARD_LOCAL_MODEL_DIR"))
    args = ap.parse_args()
    if not args.model_dir:
        ap.error("TRAINYARD_LOCAL_MODEL_DIR is not set (source scripts/env.sh) and --model-dir not given")
    if min(args.steps, args.batch_size, args.max_tokens, args.threads) < 1 or args.warmup < 0:
        ap.error("--steps, --batch-size, --max-tokens and --threads must be >= 1, --warmup >= 0")

    with open(args.texts, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f if line.strip()]
    if not texts:
        ap.error(f"{args.texts} has no texts")

    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    # No dropout: trainyard's encoder has none, so the two loops compute the same thing. Each
    # family names its dropouts its own way; every float `*dropout*` field goes to 0.
    config = AutoConfig.from_pretrained(args.model_dir)
    zeroed = []
    for key, value in config.to_dict().items():
        if "dropout" in key and isinstance(value, float) and value != 0.0:
            setattr(config, key, 0.0)
            zeroed.append(key)
    print(f"{config.model_type}: dropout set to 0 in {zeroed or 'nothing (none was set)'}", file=sys.stderr)
    if tokenizer.pad_token is None:
        if config.pad_token_id is None:
            ap.error(f"{args.model_dir}: neither the tokenizer nor config.json names a pad token")
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
    tokenizer.padding_side = "right"
    encoder = AutoModel.from_pretrained(args.model_dir, config=config)
    head = torch.nn.Sequential(
        torch.nn.Linear(config.hidden_size, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, LABELS),
    )
    encoder.train()
    head.train()
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    # Random 0/1 targets, one row per text, fixed seed.
    targets = torch.randint(0, 2, (len(texts), LABELS), generator=torch.Generator().manual_seed(SEED)).float()

    cursor = 0

    def step() -> float:
        nonlocal cursor
        idx = [(cursor + i) % len(texts) for i in range(args.batch_size)]
        cursor = (cursor + args.batch_size) % len(texts)
        enc = tokenizer(
            [texts[i] for i in idx],
            padding="longest",
            truncation=True,
            max_length=args.max_tokens,
            return_tensors="pt",
        )
        out = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        mask = enc["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        pooled = (out.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        loss = loss_fn(head(pooled), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        optimizer.step()
        return loss.item()

    for i in range(args.warmup):
        loss = step()
        print(f"warm-up step {i + 1}/{args.warmup}: loss {loss:.4f}", file=sys.stderr)

    t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step()
        if (i + 1) % 5 == 0 or i + 1 == args.steps:
            print(f"step {i + 1}/{args.steps}: loss {loss:.4f} ({time.perf_counter() - t0:.2f}s)", file=sys.stderr)
    dt = time.perf_counter() - t0

    print(
        json.dumps(
            {
                "samples_per_sec": round(args.steps * args.batch_size / dt, 3),
                "steps": args.steps,
                "batch_size": args.batch_size,
                "model_type": config.model_type,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
