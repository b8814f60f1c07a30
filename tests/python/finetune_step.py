# One finetune step in plain PyTorch on a model folder, the reference that trainyard's trainer must reproduce (tests/finetune_parity.rs).
"""Usage: python tests/python/finetune_step.py STEP_JSON OUT_DIR

STEP_JSON: {"model_dir", "texts", "targets" ([rows][labels] of 0/1), "head": {"weight", "bias"}
(the head's initial weights, [labels][hidden] and [labels]), "max_tokens", "learning_rate",
"encoder_learning_rate", "layer_lr_decay", "weight_decay", "max_grad_norm"}.

The model: `AutoModel` (dropout off), mean pooling over the attention mask, L2 normalisation,
one linear layer; the loss: binary cross-entropy with logits, mean over all cells. One AdamW
step (betas 0.9/0.999, eps 1e-8) after clipping the global gradient norm, with a parameter
group per encoder depth (embeddings 0, layer N at N + 1, a final norm above; each depth below the top layer at
`layer_lr_decay` times the rate of the one above) and no weight decay on biases and LayerNorm
weights. Writes OUT_DIR/step.json ({"loss"}) and OUT_DIR/after.safetensors (every parameter
after the step: the encoder's names, the head as classifier.out.*), and
OUT_DIR/after_no_decay.safetensors (the same step with layer_lr_decay 1, for the test to show it
tells the two apart).

With "precision": "bf16" or "fp16" in STEP_JSON the step runs as transformers' Trainer runs it
with `bf16=True` / `fp16=True`: the forward under `torch.autocast` (here on the CPU), the loss in
fp32, and for fp16 a `GradScaler` (unscale, clip, step or skip, update). Then it writes
OUT_DIR/step.json ({"loss", "skipped", "scale"}) and OUT_DIR/grads.safetensors (every
parameter's gradient as the optimizer saw it: unscaled and clipped) instead.
"""

from __future__ import annotations

import json
import os
import re
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def depth(name: str, layers: int) -> int:
    """Embeddings (and what every layer shares) 0, layer N at N + 1, a final norm above the top."""
    m = re.match(r"^(?:encoder\.layer|transformer\.layer|layers)\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    return layers + 1 if name.startswith("final_norm.") else 0


def step(spec: dict, layer_lr_decay: float, precision: str = "fp32"):
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(spec["model_dir"])
    model.eval()  # dropout off; gradients still flow
    tok = Tokenizer.from_file(os.path.join(spec["model_dir"], "tokenizer.json"))
    tok.enable_truncation(spec["max_tokens"])
    tok.no_padding()
    rows = [tok.encode(t).ids for t in spec["texts"]]
    width = max(len(r) for r in rows)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    head = torch.nn.Linear(len(spec["head"]["weight"][0]), len(spec["head"]["bias"]))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(spec["head"]["weight"]))
        head.bias.copy_(torch.tensor(spec["head"]["bias"]))
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast("cpu", dtype=half or torch.bfloat16, enabled=half is not None):
        states = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        logits = head(pooled).float()
    targets = torch.tensor(spec["targets"], dtype=torch.float32)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    scaler.scale(loss).backward()
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    params = [p for _, p in named] + list(head.parameters())
    layers = model.config.num_hidden_layers
    # As transformers' Trainer: no decay on biases and on the parameters of LayerNorm modules.
    norm_params = {
        f"{m_name}.{p_name}" if m_name else p_name
        for m_name, module in model.named_modules()
        if isinstance(module, torch.nn.LayerNorm)
        for p_name, _ in module.named_parameters(recurse=False)
    }
    groups = []
    for n, p in named:
        below_top = max(layers - depth(n, layers), 0)
        no_decay = n.endswith(".bias") or n in norm_params
        groups.append(
            {
                "params": [p],
                "lr": spec["encoder_learning_rate"] * layer_lr_decay**below_top,
                "weight_decay": 0.0 if no_decay else spec["weight_decay"],
            }
        )
    groups.append({"params": [head.weight], "lr": spec["learning_rate"], "weight_decay": spec["weight_decay"]})
    groups.append({"params": [head.bias], "lr": spec["learning_rate"], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, spec["max_grad_norm"])
    if half is not None:
        grads = {n: p.grad.detach().clone().contiguous() for n, p in named}
        grads["classifier.out.weight"] = head.weight.grad.detach().clone()
        grads["classifier.out.bias"] = head.bias.grad.detach().clone()
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.is_enabled() and scaler.get_scale() < before
        return loss.item(), grads, {"skipped": bool(skipped), "scale": scaler.get_scale() if scaler.is_enabled() else 1.0}
    optimizer.step()
    after = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
    after["classifier.out.weight"] = head.weight.detach().clone()
    after["classifier.out.bias"] = head.bias.detach().clone()
    return loss.item(), after


def main() -> int:
    spec_path, out = sys.argv[1:3]
    torch.set_num_threads(1)
    with open(spec_path) as f:
        spec = json.load(f)
    precision = spec.get("precision", "fp32")
    if precision != "fp32":
        loss, grads, amp = step(spec, spec["layer_lr_decay"], precision)
        save_file(grads, os.path.join(out, "grads.safetensors"))
        with open(os.path.join(out, "step.json"), "w") as f:
            json.dump({"loss": loss, **amp}, f)
        return 0
    loss, after = step(spec, spec["layer_lr_decay"])
    save_file(after, os.path.join(out, "after.safetensors"))
    _, plain = step(spec, 1.0)
    save_file(plain, os.path.join(out, "after_no_decay.safetensors"))
    with open(os.path.join(out, "step.json"), "w") as f:
        json.dump({"loss": loss}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
