# Python side of the GPU readiness check: writes a random BERT of MiniLM's shape, and times
# sentence-transformers-equivalent encoding of it (fp32/fp16/bf16) for scripts/gpu_check.sh.
"""Usage:
    python gpu_check_peer.py write-weights --model-dir DIR [--seed 0]
    python gpu_check_peer.py bench --model-dir DIR --sentences FILE --device cpu|cuda
        [--batch-size 128] [--repeats 3] [--threads N] [--dtypes fp32,fp16,bf16]
        [--compare TRAINYARD_EMBEDDINGS.json]

write-weights reads DIR/config.json (MiniLM: hidden 384, 6 layers, 12 heads, intermediate
1536) and writes DIR/model.safetensors with seeded random weights under the names of a
transformers BertModel checkpoint (the names trainyard's BertEncoder loads). Linear weights
and embeddings ~ N(0, initializer_range), biases ~ N(0, 0.02), LayerNorm weights ~ 1 + N(0, 0.1):
non-trivial biases and norms, so that a bug in either shows up in the agreement checks.

bench encodes every sentence of FILE with sentence-transformers (the folder's modules.json:
Transformer with max_seq_length 256, mean pooling, Normalize) when it is installed, or else
with plain transformers (same pipeline written out: truncation 256, length-sorted batches,
mean pooling over the mask, L2 normalisation; GPU_CHECK_PEER_IMPL=transformers forces it). Per dtype: a fresh fp32 load converted with
.to(dtype), one warm-up pass, then the best of --repeats passes. --compare takes the JSON that
`gpu_check --dump-embeddings` wrote ({"sentences", "embeddings"}, trainyard fp32 on the same
device) and reports the max abs difference against this side's fp32 embeddings.
Output: progress on stderr, one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def bert_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    h, i = c["hidden_size"], c["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (c["vocab_size"], h),
        "embeddings.position_embeddings.weight": (c["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": (c["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
        "pooler.dense.weight": (h, h),
        "pooler.dense.bias": (h,),
    }
    for n in range(c["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for lin, (out_f, in_f) in {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (i, h),
            "output.dense": (h, i),
        }.items():
            shapes[p + lin + ".weight"] = (out_f, in_f)
            shapes[p + lin + ".bias"] = (out_f,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + norm + ".weight"] = (h,)
            shapes[p + norm + ".bias"] = (h,)
    return shapes


def save_safetensors(tensors: dict, path: str) -> None:
    try:
        from safetensors.torch import save_file

        save_file(tensors, path, metadata={"format": "pt"})
        return
    except ImportError:
        pass
    # The format itself: u64 header length, JSON header, raw little-endian f32 data.
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        data = tensors[name].contiguous().float().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def write_weights(args) -> int:
    import torch

    with open(os.path.join(args.model_dir, "config.json")) as f:
        config = json.load(f)
    std = float(config.get("initializer_range", 0.02))
    g = torch.Generator().manual_seed(args.seed)
    tensors = {}
    for name, shape in bert_shapes(config).items():
        if "LayerNorm.weight" in name:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            t = 0.02 * torch.randn(shape, generator=g)
        else:
            t = std * torch.randn(shape, generator=g)
        tensors[name] = t.float().contiguous()
    path = os.path.join(args.model_dir, "model.safetensors")
    save_safetensors(tensors, path)
    params = sum(t.numel() for t in tensors.values())
    log(f"wrote {path}: {len(tensors)} tensors, {params / 1e6:.2f}M parameters, seed {args.seed}")
    return 0


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class StEncoder:
    """sentence-transformers itself, from the folder's modules.json."""

    def __init__(self, model_dir, device, dtype):
        import sentence_transformers
        from sentence_transformers import SentenceTransformer

        self.name = f"sentence-transformers {sentence_transformers.__version__}"
        self.model = SentenceTransformer(model_dir, device=device).to(dtype).eval()

    def encode(self, sentences, batch_size):
        import torch

        with torch.inference_mode():
            emb = self.model.encode(
                sentences, batch_size=batch_size, normalize_embeddings=True,
                convert_to_tensor=True, show_progress_bar=False,
            )
            return emb.float().cpu()


class HfEncoder:
    """The same pipeline in plain transformers, when sentence-transformers is absent."""

    def __init__(self, model_dir, device, dtype):
        import transformers
        from transformers import AutoModel, AutoTokenizer

        self.name = f"transformers {transformers.__version__} (mean pooling + normalise)"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).to(device=device, dtype=dtype).eval()
        self.device = device

    def encode(self, sentences, batch_size):
        import torch

        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        out = [None] * len(sentences)
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                batch = self.tokenizer([sentences[i] for i in idx], padding=True, truncation=True,
                                       max_length=256, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                emb = torch.nn.functional.normalize(mean, p=2, dim=1).cpu()
                for row, i in enumerate(idx):
                    out[i] = emb[row]
        return torch.stack(out)


def bench(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.sentences, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f if line.strip()]
    if args.n:
        sentences = sentences[: args.n]
    try:
        import sentence_transformers  # noqa: F401

        impl = StEncoder
    except ImportError:
        impl = HfEncoder
    if os.environ.get("GPU_CHECK_PEER_IMPL") == "transformers":
        impl = HfEncoder
    if args.device == "cuda" and not torch.cuda.is_available():
        log("peer: torch sees no CUDA")
        print(json.dumps({"peer": impl.__name__, "error": "torch.cuda.is_available() is false"}))
        return 1
    info = {
        "torch": torch.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "sentences": len(sentences),
    }
    results, compare = [], None
    reference = None
    if args.compare and os.path.exists(args.compare):
        with open(args.compare) as f:
            reference = json.load(f)
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, DTYPES[dtype_name])
        enc = impl(args.model_dir, args.device, dtype)
        info["peer"] = enc.name
        enc.encode(sentences, args.batch_size)  # warm-up (kernels, allocator, tokenizer)
        times = []
        for _ in range(max(1, args.repeats)):
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            emb = enc.encode(sentences, args.batch_size)
            times.append(time.perf_counter() - t0)
            assert emb.shape[0] == len(sentences)
        best = min(times)
        sps = len(sentences) / best
        log(f"peer {enc.name}, {args.device}, {dtype_name}, batch {args.batch_size}: {sps:.1f} sentences/s")
        results.append({"dtype": dtype_name, "batch_size": args.batch_size, "best_seconds": round(best, 6),
                        "sentences_per_second": round(sps, 2)})
        if dtype_name == "fp32" and reference:
            ours = enc.encode(reference["sentences"], args.batch_size)
            theirs = torch.tensor(reference["embeddings"], dtype=torch.float32)
            diff = (ours - theirs).abs().max().item()
            compare = {"sentences": len(reference["sentences"]), "max_abs_diff_trainyard_vs_peer": diff,
                       "tolerance": 1e-4, "ok": diff <= 1e-4}
            log(f"peer vs trainyard fp32 embeddings of {len(reference['sentences'])} sentences: max abs diff {diff:.3e}")
        del enc
        if args.device == "cuda":
            torch.cuda.empty_cache()
    info["results"] = results
    info["compare"] = compare
    print(json.dumps(info), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-weights")
    w.add_argument("--model-dir", required=True)
    w.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("bench")
    b.add_argument("--model-dir", required=True)
    b.add_argument("--sentences", required=True)
    b.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    b.add_argument("--n", type=int, default=0, help="use the first N sentences (0: all)")
    b.add_argument("--dtypes", default="fp32,fp16,bf16")
    b.add_argument("--compare", default=None)
    args = ap.parse_args()
    return write_weights(args) if args.cmd == "write-weights" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
