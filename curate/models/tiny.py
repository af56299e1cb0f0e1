"""Build a tiny random Qwen2-style model with a BPE tokenizer trained on real traces (no downloads).

``python -m curate.models.tiny DIR`` writes a model folder that ``transformers`` loads
(``AutoModelForCausalLM`` / ``AutoTokenizer``): ~0.2 M parameters, a 512-token context, and a
byte-level BPE vocabulary learnt from the bundled Sky-T1 math traces. Its weights are random, so
its text means nothing: it exists to run the generation stack (and the CPU recipes) end to end.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "samples" / "skythought_correct5k27b_math500.jsonl"
EOS = "<|endoftext|>"


def _texts(limit: int = 200) -> Iterator[str]:
    with SAMPLE.open() as f:
        for k, line in enumerate(f):
            if k >= limit:
                break
            row = json.loads(line)
            yield row.get("question") or ""
            code = row.get("code") or []
            yield code[0] if code else ""


def build(out: str | Path, vocab_size: int = 512, context: int = 512, seed: int = 0) -> Path:
    """Write the tiny model and tokenizer to ``out`` and return the folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    fast.model_max_length = context
    fast.save_pretrained(out)
    config = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=context, tie_word_embeddings=True,
                         eos_token_id=tok.token_to_id(EOS), pad_token_id=tok.token_to_id(EOS),
                         bos_token_id=None)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m curate.models.tiny", description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder to write the model to")
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--context", type=int, default=512)
    args = ap.parse_args(argv)
    print(build(args.out, args.vocab_size, args.context))


if __name__ == "__main__":
    main()
