# benches/scale: writes a tiny random BERT checkpoint folder (width 64, 2 layers, MiniLM's tokenizer) for scale.sh.
import json, shutil, sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

out, minilm = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
vocab_size = json.loads((minilm / "config.json").read_text())["vocab_size"]
torch.manual_seed(0)
config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu")
BertModel(config, add_pooling_layer=True).eval().save_pretrained(out, safe_serialization=True)
for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    if (minilm / name).exists():
        shutil.copy(minilm / name, out / name)
print(f"tiny BERT: {sum(p.numel() for p in BertModel(config).parameters()):,} parameters in {out}")
