# Writes a small randomly initialised encoder of one family with Hugging Face transformers, its own tokenizer.json, and the reference outputs trainyard must reproduce (tests/it/encoder_reference.rs).
"""Usage: python tests/python/make_family_model.py FAMILY OUT_DIR [--bench]

--bench: all-MiniLM-L6-v2's size instead, for benches/encoder_families.sh: 6 layers of width 384,
12 heads, feed-forward of MiniLM's size (1536; ModernBERT's gated one 1024, the same weights and
arithmetic), 512-514 positions, `model_max_length` 256, an embedding table of MiniLM's 30,522 rows,
and a BPE that also learnt the benchmark's words (benches/make_sentences.py), so that its
sentences are about as many tokens as in MiniLM's WordPiece (~33) rather than ~4x more.

FAMILY: roberta | xlm-roberta | distilbert | mpnet | modernbert | deberta-v3 | deberta-v2. OUT_DIR gets:
  base/        the encoder (`AutoModel`): config.json, model.safetensors, tokenizer.json,
               tokenizer_config.json
  classifier/  the same weights saved by `*ForSequenceClassification` (the family's task prefix,
               `roberta.`, `distilbert.`, `mpnet.`, `model.`, `deberta.`, and a classification head), which trainyard
               must load as the same encoder
  reference.json  {"family", "max_input_tokens", "sentences", "ids" (per sentence), "hidden" (per sentence: tokens x hidden,
               each sentence run alone), "batch_hidden_max_abs_diff" (the padded batch against
               the sentences alone, in transformers), "mean" (mean-pooled, not normalised)}
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

SENTENCES = [
    "A short one.",
    "The parcel arrived two weeks late and the box was crushed on one side.",
    "Win a FREE cruise now!!! Click the link before midnight.",
    "Ceci n'est pas une phrase anglaise, mais elle passe quand même.",
    "ok",
    "Quarterly numbers look fine; revenue grew 4% while costs stayed flat across every region we track.",
]
CORPUS = SENTENCES * 3 + [
    "the quick brown fox jumps over the lazy dog",
    "labelled text in, served classifiers out",
    "annotators vote on every label of every document",
]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


# --bench: MiniLM's vocabulary size (the embedding table; rows past the tokenizer's are unused).
BENCH_VOCAB = 30522


def bench_corpus() -> list[str]:
    """Sentences like the benchmark's (same words, another seed), so that the BPE learns whole words."""
    import importlib.util
    import random

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benches", "make_sentences.py")
    spec = importlib.util.spec_from_file_location("make_sentences", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = random.Random(7)
    return [module.sentence(rng) for _ in range(4000)]


def tokenizer(out: str, bench: bool = False) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000 if bench else 400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS + bench_corpus() if bench else CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(os.path.join(out, "tokenizer.json"))
    return tok


def model_classes(family: str):
    import transformers as t

    classes = {
        "roberta": ("RobertaConfig", "RobertaModel", "RobertaForSequenceClassification"),
        "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel", "XLMRobertaForSequenceClassification"),
        "distilbert": ("DistilBertConfig", "DistilBertModel", "DistilBertForSequenceClassification"),
        "mpnet": ("MPNetConfig", "MPNetModel", "MPNetForSequenceClassification"),
        "modernbert": ("ModernBertConfig", "ModernBertModel", "ModernBertForSequenceClassification"),
        # DeBERTa-v3's options (shared keys, log buckets, no absolute positions) and v2's.
        "deberta-v3": ("DebertaV2Config", "DebertaV2Model", "DebertaV2ForSequenceClassification"),
        "deberta-v2": ("DebertaV2Config", "DebertaV2Model", "DebertaV2ForSequenceClassification"),
    }
    if family not in classes:
        raise SystemExit(f"unknown family {family}")
    return tuple(getattr(t, name) for name in classes[family])


def make_config(family: str, Config, vocab: int, bench: bool):
    """A small config (MiniLM's size with --bench); at most 64 tokens in the small one."""
    if family == "distilbert":
        size = (
            dict(dim=384, n_layers=6, n_heads=12, hidden_dim=1536, max_position_embeddings=512)
            if bench
            else dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
        )
        return Config(vocab_size=vocab, **size, pad_token_id=1, activation="gelu")
    if family in ("deberta-v3", "deberta-v2"):
        size = (
            dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512)
            if bench
            else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
        )
        options = (
            # 8 buckets in the small model, so that the test sentences (up to 33 tokens) reach
            # the log-spaced ones.
            dict(position_buckets=256 if bench else 8, share_att_key=True, position_biased_input=False, norm_rel_ebd="layer_norm")
            if family == "deberta-v3"
            else dict(position_buckets=-1, share_att_key=False, position_biased_input=True, norm_rel_ebd="none")
        )
        return Config(
            vocab_size=vocab,
            **size,
            **options,
            relative_attention=True,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            type_vocab_size=0,
            layer_norm_eps=1e-7,
            pad_token_id=1,
            hidden_act="gelu",
        )
    if family == "modernbert":
        # 3 layers: global, local, global; a window of 4 tokens each side, so that the test
        # sentences (up to 33 tokens) reach past it.
        size = (
            # GeGLU: Wi is 384 -> 2 x 1024, Wo 1024 -> 384, the weights of MiniLM's 384 -> 1536 -> 384.
            dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1024, max_position_embeddings=512, local_attention=128)
            if bench
            else dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48, max_position_embeddings=64, local_attention=8)
        )
        return Config(
            vocab_size=vocab,
            **size,
            global_attn_every_n_layers=2 if not bench else 3,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            cls_token_id=0,
            sep_token_id=2,
            hidden_activation="gelu",
        )
    size = (
        dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, max_position_embeddings=514)
        if bench
        else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=66)
    )
    extra = dict(relative_attention_num_buckets=32) if family == "mpnet" else dict(type_vocab_size=1)
    return Config(
        vocab_size=vocab,
        **size,
        **extra,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def main() -> int:
    family, out = sys.argv[1:3]
    bench = "--bench" in sys.argv[3:]
    torch.manual_seed(1234)
    torch.set_num_threads(1)
    base_dir = os.path.join(out, "base")
    cls_dir = os.path.join(out, "classifier")
    os.makedirs(base_dir, exist_ok=True)
    os.makedirs(cls_dir, exist_ok=True)
    tok = tokenizer(base_dir, bench)
    Config, Model, ForClassification = model_classes(family)
    vocab = max(BENCH_VOCAB, tok.get_vocab_size()) if bench else tok.get_vocab_size()
    config = make_config(family, Config, vocab, bench)
    kwargs = {"add_pooling_layer": False} if family in ("roberta", "xlm-roberta", "mpnet") else {}
    model = Model(config, **kwargs).eval()
    # Larger than the default 0.02 so that every layer moves the states.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05 if bench else 0.2)
    model.save_pretrained(base_dir, safe_serialization=True)
    # As the families' published folders have: the special tokens `transformers` pads with.
    with open(os.path.join(base_dir, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "mask_token": "<mask>",
                "model_max_length": 256 if bench else 64,
            },
            f,
        )
    tok.save(os.path.join(cls_dir, "tokenizer.json"))
    classifier = ForClassification(config)
    getattr(classifier, classifier.base_model_prefix).load_state_dict(model.state_dict(), strict=False)
    classifier.save_pretrained(cls_dir, safe_serialization=True)

    ids = [tok.encode(s).ids for s in SENTENCES]
    hidden, means = [], []
    with torch.no_grad():
        for row in ids:
            states = model(input_ids=torch.tensor([row])).last_hidden_state[0]
            hidden.append(states.tolist())
            means.append(states.mean(0).tolist())
        # The same sentences as one right-padded batch (padding with pad_token_id 1).
        width = max(len(r) for r in ids)
        batch = torch.tensor([r + [1] * (width - len(r)) for r in ids])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
        padded = model(input_ids=batch, attention_mask=mask).last_hidden_state
        diff = max(
            (padded[i, : len(r)] - torch.tensor(hidden[i])).abs().max().item() for i, r in enumerate(ids)
        )
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(
            {
                "family": family,
                "max_input_tokens": 64,
                "sentences": SENTENCES,
                "ids": ids,
                "hidden": hidden,
                "mean": means,
                "batch_hidden_max_abs_diff": diff,
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
