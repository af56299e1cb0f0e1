"""``transformers`` backend: local ``model.generate`` in batches, for CPU tests and small jobs.

Prompts are left-padded and generated ``batch_size`` at a time with ``n`` return sequences each;
``torch.manual_seed(seed)`` is set before every batch, so a run is reproducible for the same
batches (a sample can differ when the batch around it differs; the cache pins what was made).
A prompt longer than the model's context (``max_position_embeddings`` less ``max_tokens``) is not
sent: it comes back as an error completion with the reason.
"""

from __future__ import annotations

from typing import Any

from curate.models.base import Backend, Completion, SamplingParams, failed, prompt_ids
from curate.models.cache import GenerationCache


class TransformersBackend(Backend):
    """Local Hugging Face model; ``chat``: auto (use the tokenizer's chat template when it has one) | true | false."""

    kind = "transformers"

    def __init__(self, model: str, cache: GenerationCache | None = None, *, device: str = "cpu",
                 dtype: str = "float32", batch_size: int = 8, chat: bool | str = "auto",
                 max_context: int | None = None, threads: int | None = None) -> None:
        super().__init__(model, cache)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        self.tokenizer.model_max_length = 1 << 30  # the context is checked here, per prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.net = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(device).eval()
        self.device = device
        self.batch_size = max(1, int(batch_size))
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.chat = has_template if chat == "auto" else bool(chat)
        self.max_context = max_context or getattr(self.net.config, "max_position_embeddings", None)

    def _render(self, prompt: str) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, self.chat)

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        torch = self._torch
        results: list[list[Completion] | None] = [None] * len(prompts)
        ids = [self._render(p) for p in prompts]
        ready = []
        for i, seq in enumerate(ids):
            if self.max_context and len(seq) + params.max_tokens > self.max_context:
                results[i] = failed(f"prompt too long: {len(seq)} tokens + max_tokens {params.max_tokens} "
                                    f"> context {self.max_context}", params.n, len(seq))
            elif not seq:
                results[i] = failed("empty prompt", params.n)
            else:
                ready.append(i)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        for b in range(0, len(ready), self.batch_size):
            chunk = ready[b:b + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
            sampled = params.temperature > 0
            per = params.n if sampled else 1  # greedy: one sequence, repeated n times
            kwargs: dict[str, Any] = {"max_new_tokens": params.max_tokens, "num_return_sequences": per,
                                      "pad_token_id": pad, "eos_token_id": eos}
            if sampled:
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            torch.manual_seed(params.seed)
            with torch.inference_mode():
                out = self.net.generate(input_ids=batch["input_ids"].to(self.device),
                                        attention_mask=batch["attention_mask"].to(self.device), **kwargs)
            width = batch["input_ids"].shape[1]
            new = out[:, width:].tolist()
            for j, i in enumerate(chunk):
                comps = []
                for seq in new[j * per:(j + 1) * per]:
                    comps.append(self._completion(seq, len(ids[i]), params, eos, pad))
                comps = comps * (params.n // per)
                results[i] = comps
        return [r if r is not None else failed("not generated", params.n) for r in results]

    def _completion(self, seq: list[int], prompt_tokens: int, params: SamplingParams,
                    eos: int | None, pad: int | None) -> Completion:
        finish = "length"
        if eos is not None and eos in seq:
            seq = seq[:seq.index(eos) + 1]
            finish = "stop"
        elif pad is not None and pad != eos:
            while seq and seq[-1] == pad:
                seq = seq[:-1]
        text = self.tokenizer.decode(seq, skip_special_tokens=True)
        for s in params.stop:
            cut = text.find(s)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        return Completion(text, prompt_tokens, len(seq), finish)

    def close(self) -> None:
        self.net = None
