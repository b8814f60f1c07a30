# Peer side of the inference benchmark: a small aiohttp server doing what the old Python inference server did (MiniLM + MLP head, one request = one forward pass).
"""Usage:
    python benches/predict_peer.py --port 8400 [--model-dir DIR] [--threads 2] [--host 127.0.0.1]

The encoder is `transformers` AutoModel/AutoTokenizer of all-MiniLM-L6-v2 loaded offline from
DIR (default $TRAINYARD_LOCAL_MODEL_DIR): tokenizer truncation at 256 tokens, padding to the
longest text of the request, mean pooling over the attention mask, L2 normalisation, then an
MLP head Linear(384,256) -> ReLU -> Linear(256,2) -> sigmoid over the labels
["spam", "positive_sentiment"].

The head's weights are random with a fixed seed: throughput and latency do not depend on the
values of the weights, only on the shapes, so this is as fast as a trained head would be.

Endpoints:
    GET  /health  -> {"status": "ok", "model": "peer"}
    POST /predict {"text": str, "threshold": number?}
         -> {"text", "predictions": {label: score}, "positive_labels": [...], "top_label",
             "max_score", "error": null}
    POST /batch   {"texts": [str, ...], "threshold": number?}
         -> {"count": n, "results": [same objects as /predict]}
            (the batch's texts go through the model together, in one forward pass)

The model runs on one worker thread (`loop.run_in_executor` with a 1-thread executor) under
torch.inference_mode(), with torch.set_num_threads(--threads) intra-op threads: a normal,
fair Python deployment. Requests are not batched across each other (the old server did not
do that either). Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LABELS = ["spam", "positive_sentiment"]
MAX_TOKENS = 256
DEFAULT_THRESHOLD = 0.5
SEED = 1234


class Classifier:
    def __init__(self, model_dir: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.encoder = AutoModel.from_pretrained(model_dir).eval()
        hidden = self.encoder.config.hidden_size  # 384
        # Random head with a fixed seed (see the module docstring: speed does not depend on it).
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(SEED)
        self.head = torch.nn.Sequential(
            torch.nn.Linear(hidden, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, len(LABELS)),
        ).eval()
        torch.random.set_rng_state(gen_state)

    def scores(self, texts: list[str]) -> list[list[float]]:
        """One forward pass over all `texts`; sigmoid scores, one row per text."""
        torch = self.torch
        with torch.inference_mode():
            enc = self.tokenizer(
                texts, padding="longest", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            out = self.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            mask = enc["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return torch.sigmoid(self.head(pooled)).tolist()


def result(text: str, row: list[float], threshold: float) -> dict:
    predictions = {label: float(score) for label, score in zip(LABELS, row)}
    top = max(range(len(LABELS)), key=lambda i: row[i])
    return {
        "text": text,
        "predictions": predictions,
        "positive_labels": [label for label, score in predictions.items() if score >= threshold],
        "top_label": LABELS[top],
        "max_score": float(row[top]),
        "error": None,
    }


def threshold_of(body: dict) -> float:
    t = body.get("threshold", DEFAULT_THRESHOLD)
    if t is None:
        return DEFAULT_THRESHOLD
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise ValueError("`threshold` must be a number")
    return float(t)


def make_app(clf: Classifier, threads: int, batch_mode: str = "together"):
    from aiohttp import web

    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix="model",
        # The intra-op thread count is also set on the worker thread itself (with OpenMP it
        # is per calling thread).
        initializer=lambda: clf.torch.set_num_threads(threads),
    )

    def bad_request(message: str):
        return web.json_response({"error": message}, status=400)

    async def read_json(request):
        try:
            body = await request.json()
        except Exception:
            return None
        return body if isinstance(body, dict) else None

    async def health(_request):
        return web.json_response({"status": "ok", "model": "peer"})

    async def predict(request):
        body = await read_json(request)
        if body is None:
            return bad_request("body must be a JSON object")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return bad_request("`text` must be a non-empty string")
        try:
            threshold = threshold_of(body)
        except ValueError as e:
            return bad_request(str(e))
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(executor, clf.scores, [text])
        return web.json_response(result(text, rows[0], threshold))

    async def batch(request):
        body = await read_json(request)
        if body is None:
            return bad_request("body must be a JSON object")
        texts = body.get("texts")
        if not isinstance(texts, list) or not texts:
            return bad_request("`texts` must be a non-empty list of strings")
        if not all(isinstance(t, str) and t.strip() for t in texts):
            return bad_request("every item of `texts` must be a non-empty string")
        try:
            threshold = threshold_of(body)
        except ValueError as e:
            return bad_request(str(e))
        loop = asyncio.get_running_loop()
        if batch_mode == "one_by_one":
            # The second seed's /batch: one text per forward pass.
            rows = await loop.run_in_executor(
                executor, lambda: [clf.scores([t])[0] for t in texts]
            )
        else:
            rows = await loop.run_in_executor(executor, clf.scores, texts)
        return web.json_response(
            {"count": len(texts), "results": [result(t, r, threshold) for t, r in zip(texts, rows)]}
        )

    async def shutdown(_app):
        executor.shutdown(wait=False, cancel_futures=True)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/predict", predict)
    app.router.add_post("/batch", batch)
    app.on_cleanup.append(shutdown)
    return app


def main() -> int:
    ap = argparse.ArgumentParser(description="Python inference peer for benches/predict_throughput.sh")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model-dir", default=os.environ.get("TRAINYARD_LOCAL_MODEL_DIR"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    ap.add_argument(
        "--batch-mode",
        choices=["together", "one_by_one"],
        default="together",
        help="/batch in one forward pass (a fair modern server) or one text at a time (the second seed)",
    )
    args = ap.parse_args()
    if not args.model_dir:
        ap.error("TRAINYARD_LOCAL_MODEL_DIR is not set (source scripts/env.sh) and --model-dir not given")
    if args.threads < 1:
        ap.error("--threads must be >= 1")

    import torch
    from aiohttp import web

    torch.set_num_threads(args.threads)
    clf = Classifier(args.model_dir)
    clf.scores(["warm-up sentence for the peer"])  # first call allocates; keep it out of the bench
    print(f"predict peer: {args.model_dir} on {args.host}:{args.port}, {args.threads} threads", file=sys.stderr)
    web.run_app(make_app(clf, args.threads, args.batch_mode), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
