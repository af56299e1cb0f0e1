"""A tiny random Qwen2-style chat model for CPU tests: BPE trained on the bundled traces, a ChatML template.

``build_chat_model(DIR)`` writes a folder ``AutoModelForCausalLM`` / ``AutoTokenizer`` load, with
``<|im_start|>`` / ``<|im_end|>`` turns like Qwen2.5 so chat templating and loss masking run the
real path. No downloads; a few seconds on a laptop CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _texts(limit: int = 120) -> Iterator[str]:
    for path in sorted(SAMPLES.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for k, line in enumerate(f):
                if k >= limit:
                    break
                row = json.loads(line)
                yield row.get("question") or ""
                yield from (row.get("code") or [])[:1]


def build_chat_model(out: str | Path, vocab_size: int = 1024, context: int = 4096, hidden: int = 64,
                     layers: int = 2, seed: int = 0, init_std: float = 0.1) -> Path:
    """Write the tiny model + tokenizer (with chat template) to ``out`` and return the folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.model_max_length = context
    fast.save_pretrained(out)
    config = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=context, tie_word_embeddings=True,
                         eos_token_id=tok.token_to_id("<|im_end|>"), pad_token_id=tok.token_to_id("<|endoftext|>"),
                         bos_token_id=None, initializer_range=init_std)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out
