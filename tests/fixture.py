"""A tiny, deterministic, local training fixture: model, tokenizer, data. Nothing is downloaded.

Built once per directory and reused (a stamp file records what was built).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

VOCAB_WORDS = [f"w{i}" for i in range(120)]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
STAMP = "fixture-v1"

# Every run of the harness keeps Axolotl and the Hugging Face libraries offline and untracked.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}


def _build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + VOCAB_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(out)


def _build_model(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(SPECIALS) + len(VOCAB_WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)


def write_dataset(path: Path, samples: int, seed: int = 0) -> Path:
    """``samples`` lines of 8 to 16 words: every line survives Axolotl's filters."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(samples):
            words = rng.choices(VOCAB_WORDS, k=rng.randint(8, 16))
            fh.write(json.dumps({"text": " ".join(words)}) + "\n")
    return path


def build(root: Path) -> Path:
    """Model and tokenizer under ``root/model``; returns that directory."""
    model_dir = root / "model"
    stamp = model_dir / ".stamp"
    if stamp.exists() and stamp.read_text() == STAMP:
        return model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    _build_tokenizer(model_dir)
    _build_model(model_dir)
    stamp.write_text(STAMP)
    return model_dir
