"""``vllm`` backend: offline batch generation with ``vllm.LLM`` (GPU; the default for real runs).

``vllm`` is imported when the backend is built, never at package import, so curate installs
and tests without it. All cache misses of a call go to one ``LLM.generate`` (vLLM schedules the
batch itself); each prompt gets ``SamplingParams(n=..., seed=seed)``. A prompt over the model's
context is refused before the call, as an error completion with the reason.
"""

from __future__ import annotations

from typing import Any

from curate.models.base import Backend, Completion, SamplingParams, failed, prompt_ids
from curate.models.cache import GenerationCache


class VLLMBackend(Backend):
    """Offline ``vllm.LLM``; extra settings (tensor_parallel_size, gpu_memory_utilization, ...) go to its constructor."""

    kind = "vllm"

    def __init__(self, model: str, cache: GenerationCache | None = None, *, chat: bool | str = "auto",
                 **llm_kwargs: Any) -> None:
        super().__init__(model, cache)
        try:
            import vllm
        except ImportError:
            raise ImportError("the vllm backend needs vLLM on a GPU machine: pip install vllm") from None
        self._vllm = vllm
        self._attach(llm_kwargs.pop("llm", None) or vllm.LLM(model=model, **llm_kwargs), chat)

    @classmethod
    def from_llm(cls, llm: Any, model: str, cache: GenerationCache | None = None, chat: bool | str = "auto") -> VLLMBackend:
        """Wrap an already built ``vllm.LLM`` (benchmarks; sharing one engine)."""
        return cls(model, cache, chat=chat, llm=llm)

    def _attach(self, llm: Any, chat: bool | str) -> None:
        self.llm = llm
        self.tokenizer = self.llm.get_tokenizer()
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.chat = has_template if chat == "auto" else bool(chat)
        config = getattr(getattr(llm, "llm_engine", None), "model_config", None) or getattr(llm, "model_config", None)
        self.max_context = int(getattr(config, "max_model_len", 0) or self.tokenizer.model_max_length)

    def _render(self, prompt: str) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, self.chat)

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        sp = self._vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                       max_tokens=params.max_tokens, seed=params.seed,
                                       stop=list(params.stop) or None)
        results: list[list[Completion] | None] = [None] * len(prompts)
        ids = [self._render(p) for p in prompts]
        ready = []
        for i, seq in enumerate(ids):
            if len(seq) + params.max_tokens > self.max_context:
                results[i] = failed(f"prompt too long: {len(seq)} tokens + max_tokens {params.max_tokens} "
                                    f"> context {self.max_context}", params.n, len(seq))
            else:
                ready.append(i)
        if ready:
            inputs = [{"prompt_token_ids": ids[i]} for i in ready]
            outs = self.llm.generate(inputs, sp, use_tqdm=False)
            for i, out in zip(ready, outs, strict=True):
                results[i] = [Completion(o.text, len(ids[i]), len(o.token_ids),
                                         "length" if o.finish_reason == "length" else "stop")
                              for o in sorted(out.outputs, key=lambda o: o.index)]
        return [r if r is not None else failed("not generated", params.n) for r in results]

    def close(self) -> None:
        self.llm = None
