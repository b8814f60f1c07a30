# Loads a trainyard export with Hugging Face transformers (and sentence-transformers) and writes the scores it computes; tests/it/model_export.rs compares them with trainyard's own.
"""Score texts with an exported trainyard model version, outside trainyard.

Usage: python tests/python/export_roundtrip.py FOLDER INPUT.json OUTPUT.json

INPUT.json: {"texts": [...]} for a finetuned export (the encoder is the folder itself), or
{"embeddings": [[...], ...]} for a head-only export (vectors of the embedding model that
trainyard.json names). OUTPUT.json: {"scores": [[per label]], "labels": [...],
"positive_labels": [[...]], "sentence_transformers_max_abs_diff": float | null}.
Only transformers, safetensors and torch are used for the scores; sentence-transformers loads
the same folder as a cross-check of the pooling files.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


def main() -> int:
    folder, input_path, output_path = sys.argv[1:4]
    torch.manual_seed(0)
    torch.set_num_threads(2)
    with open(os.path.join(folder, "trainyard.json"), encoding="utf-8") as f:
        meta = json.load(f)
    with open(input_path, encoding="utf-8") as f:
        request = json.load(f)
    head = load_file(os.path.join(folder, "head.safetensors"))
    st_diff = None
    if meta["mode"] == "finetune":
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoder = AutoModel.from_pretrained(folder).eval()
        texts = request["texts"]
        batch = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=meta["truncation"]["max_tokens"],
            return_tensors="pt",
        )
        # Families with token types (BERT, RoBERTa) get type 0, as trainyard gives them;
        # DistilBERT and MPNet take none.
        import inspect

        batch.pop("token_type_ids", None)
        if "token_type_ids" in inspect.signature(encoder.forward).parameters:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        with torch.no_grad():
            hidden = encoder(**batch).last_hidden_state
            if meta["pooling"]["mode"] == "cls":
                x = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                x = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if meta["pooling"]["normalize"]:
                x = torch.nn.functional.normalize(x, dim=-1)
        try:
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(folder, device="cpu").eval()
            st_x = torch.tensor(st.encode(texts, convert_to_numpy=True))
            st_diff = float((st_x - x).abs().max())
        except ImportError:
            pass
    else:
        x = torch.tensor(request["embeddings"], dtype=torch.float32)
    with torch.no_grad():
        if "hidden.weight" in head:
            x = torch.relu(x @ head["hidden.weight"].T + head["hidden.bias"])
        logits = x @ head["out.weight"].T + head["out.bias"]
        scores = torch.softmax(logits, -1) if meta["activation"] == "softmax" else torch.sigmoid(logits)
    labels = meta["labels"]
    positive = [
        [label for label, s, t in zip(labels, row, meta["thresholds"]) if s >= t] for row in scores.tolist()
    ]
    with open(output_path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "scores": scores.tolist(),
                "labels": labels,
                "positive_labels": positive,
                "sentence_transformers_max_abs_diff": st_diff,
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
