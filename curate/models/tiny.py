"""Build a tiny random Qwen2-style model with a BPE tokenizer trained on real traces (no downloads).

``python -m curate.models.tiny DIR`` writes a model folder that ``transformers`` loads
(``AutoModelForCausalLM`` / ``AutoTokenizer``): ~0.2 M parameters, a 512-token context, and a
byte-level BPE vocabulary learnt from the bundled Sky-T1 math traces. Its weights are random, so
its text means nothing: it exists to run the generation stack (and the CPU recipes) end to end.
``build(DIR, chat=True)`` is the trainer's variant: ``<|im_start|>`` / ``<|im_end|>`` turns and a
ChatML template like Qwen2.5, so chat templating and loss masking run the real path.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
SAMPLE = SAMPLES / "skythought_correct5k27b_math500.jsonl"
EOS = "<|endoftext|>"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# defaults per kind: (vocabulary, context, initializer std, traces read per sample file)
_DEFAULTS = {False: (512, 512, 0.02, 200), True: (1024, 4096, 0.1, 120)}


def _texts(paths: Iterable[Path], limit: int) -> Iterator[str]:
    """Each trace's question and first response, from the first ``limit`` rows of each file."""
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for k, line in enumerate(f):
                if k >= limit:
                    break
                row = json.loads(line)
                yield row.get("question") or ""
                code = row.get("code") or []
                yield code[0] if code else ""


def build(out: str | Path, vocab_size: int | None = None, context: int | None = None, hidden: int = 64,
          layers: int = 2, seed: int = 0, init_std: float | None = None, chat: bool = False) -> Path:
    """Write the tiny model and tokenizer to ``out`` and return the folder.

    ``chat``: ChatML turns (EOS ``<|im_end|>``, pad ``<|endoftext|>``) and a BPE learnt on every
    bundled sample; unset sizes take the kind's defaults (plain 512/512, chat 1024/4096).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab, ctx, std, rows = _DEFAULTS[chat]
    vocab_size, context = vocab_size or vocab, context or ctx
    init_std = init_std if init_std is not None else std
    special, eos = ([EOS, "<|im_start|>", "<|im_end|>"], "<|im_end|>") if chat else ([EOS], EOS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(sorted(SAMPLES.glob("*.jsonl")) if chat else [SAMPLE], rows), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=EOS)
    if chat:
        fast.chat_template = CHATML
    fast.model_max_length = context
    fast.save_pretrained(out)
    config = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=context, tie_word_embeddings=True,
                         eos_token_id=tok.token_to_id(eos), pad_token_id=tok.token_to_id(EOS),
                         bos_token_id=None, initializer_range=init_std)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m curate.models.tiny", description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder to write the model to")
    ap.add_argument("--vocab-size", type=int, default=None)
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--chat", action="store_true", help="ChatML turns and template (the trainer's tiny model)")
    args = ap.parse_args(argv)
    print(build(args.out, args.vocab_size, args.context, chat=args.chat))


if __name__ == "__main__":
    main()
