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


def _phrase(rng: random.Random, low: int = 4, high: int = 8) -> str:
    return " ".join(rng.choices(VOCAB_WORDS, k=rng.randint(low, high)))


def _write_rows(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def write_kto_dataset(path: Path, samples: int, seed: int = 0) -> Path:
    """KTO rows for Axolotl's ``kto`` type ``chatml.ultra``: ``prompt``, ``completion``, ``label`` (alternating)."""
    rng = random.Random(seed)
    return _write_rows(path, ({"prompt": _phrase(rng), "completion": _phrase(rng), "label": i % 2 == 0} for i in range(samples)))


def write_orpo_dataset(path: Path, samples: int, seed: int = 0) -> Path:
    """ORPO rows for Axolotl's ``orpo`` type ``chat_template.argilla``: ``chosen`` and ``rejected`` as user/assistant turns."""
    rng = random.Random(seed)

    def turns(prompt: str) -> list[dict]:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _phrase(rng)}]

    rows = []
    for _ in range(samples):
        prompt = _phrase(rng)
        rows.append({"chosen": turns(prompt), "rejected": turns(prompt)})
    return _write_rows(path, rows)


def write_preference_dataset(path: Path, samples: int, seed: int = 0) -> Path:
    """Preference pairs for Axolotl's ``dpo`` type ``chatml`` (DPO, SimPO): ``prompt``, ``chosen``, ``rejected``."""
    rng = random.Random(seed)
    return _write_rows(path, ({k: _phrase(rng) for k in ("prompt", "chosen", "rejected")} for _ in range(samples)))


def write_bradley_terry_dataset(path: Path, samples: int, seed: int = 0) -> Path:
    """Reward-model pairs for ``bradley_terry.chat_template``: ``system``, ``input``, ``chosen``, ``rejected``."""
    rng = random.Random(seed)
    return _write_rows(
        path, ({"system": "", "input": _phrase(rng), "chosen": _phrase(rng), "rejected": _phrase(rng)} for _ in range(samples))
    )


def write_stepwise_dataset(path: Path, samples: int, seed: int = 0) -> Path:
    """Process-reward rows for ``stepwise_supervised``: ``prompt``, ``completions`` (steps), ``labels`` (one bool per step)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(samples):
        steps = rng.randint(2, 3)
        rows.append(
            {
                "prompt": _phrase(rng),
                "completions": [_phrase(rng, 2, 4) for _ in range(steps)],
                "labels": [rng.random() < 0.5 for _ in range(steps)],
            }
        )
    return _write_rows(path, rows)


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
