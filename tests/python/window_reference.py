# Embeds long texts as overlapping windows in plain transformers, the reference for trainyard's `long_texts = "windows"` (tests/it/encoder_reference.rs).
"""Usage: python tests/python/window_reference.py MODEL_DIR MAX_TOKENS OVERLAP MAX_WINDOWS IN.json OUT.json

IN.json: a list of texts. Each text is tokenized whole (tokenizer.json, special tokens added);
its text tokens (between the special tokens) are cut into windows of MAX_TOKENS minus the
special tokens, each starting OVERLAP tokens before the previous one ends, at most MAX_WINDOWS;
each window, with the special tokens around it, is run through AutoModel alone, mean-pooled and
L2-normalised; the text's vector is the mean of its windows' vectors weighted by their text
tokens, L2-normalised. OUT.json: {"vectors": [...], "windows": [per text]}.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def main() -> int:
    model_dir, max_tokens, overlap, max_windows, inp, out = sys.argv[1:7]
    max_tokens, overlap, max_windows = int(max_tokens), int(overlap), int(max_windows)
    from transformers import AutoModel

    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(model_dir).eval()
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    with_special = tok.encode("a").ids
    bare = tok.encode("a", add_special_tokens=False).ids
    at = next(i for i in range(len(with_special)) if with_special[i : i + len(bare)] == bare)
    prefix, suffix = with_special[:at], with_special[at + len(bare) :]
    span = max_tokens - len(prefix) - len(suffix)
    step = span - overlap
    texts = json.load(open(inp))
    vectors, counts = [], []
    with torch.no_grad():
        for text in texts:
            ids = tok.encode(text).ids
            body = ids[len(prefix) : len(ids) - len(suffix)]
            windows = []
            start = 0
            while True:
                part = body[start : start + span]
                windows.append(part)
                if start + span >= len(body) or len(windows) == max_windows:
                    break
                start += step
            total = sum(len(w) for w in windows)
            acc = None
            for w in windows:
                row = torch.tensor([prefix + w + suffix])
                states = model(input_ids=row, token_type_ids=torch.zeros_like(row)).last_hidden_state[0]
                v = torch.nn.functional.normalize(states.mean(0), dim=0) * (len(w) / total)
                acc = v if acc is None else acc + v
            vectors.append(torch.nn.functional.normalize(acc, dim=0).tolist())
            counts.append(len(windows))
    json.dump({"vectors": vectors, "windows": counts}, open(out, "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
