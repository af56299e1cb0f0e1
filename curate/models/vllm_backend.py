"""``vllm`` backend: offline batch generation with ``vllm.LLM`` (GPU; the default for real runs).

``vllm`` is imported, and the engine built, at the first cache miss, never at package import or
construction, so curate installs and tests without it and a worker that only reads completions
made elsewhere (``curate.engines.llm``) never loads the model. All misses of a call go to one
``LLM.generate`` (vLLM schedules the batch itself). Sample ``j`` of a prompt is its own request
with ``seed + j``, the shape Ray Data's vLLM processor takes too, so both paths draw the same
samples. A prompt over the model's context is refused before the call, with the reason.
"""

from __future__ import annotations

from typing import Any

from curate.models.base import Backend, Completion, SamplingParams, failed, prompt_ids
from curate.models.cache import GenerationCache


def sample_params(params: SamplingParams, j: int) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments of sample ``j`` of a request (one sample, seed + j)."""
    return {"n": 1, "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
            "seed": params.seed + j, "stop": list(params.stop) or None}


def too_long(prompt_tokens: int, params: SamplingParams, context: int) -> str | None:
    """Why a prompt cannot be served within the model's context, or None."""
    if prompt_tokens + params.max_tokens > context:
        return f"prompt too long: {prompt_tokens} tokens + max_tokens {params.max_tokens} > context {context}"
    return None


def finish(completion_tokens: int, params: SamplingParams, reason: str | None = None) -> str:
    """``length`` when the sample stopped at ``max_tokens``, else ``stop``."""
    if reason is not None:
        return "length" if reason == "length" else "stop"
    return "length" if completion_tokens >= params.max_tokens else "stop"


class VLLMBackend(Backend):
    """Offline ``vllm.LLM``; extra settings (tensor_parallel_size, gpu_memory_utilization, ...) go to its constructor."""

    kind = "vllm"

    def __init__(self, model: str, cache: GenerationCache | None = None, *, chat: bool | str = "auto",
                 **llm_kwargs: Any) -> None:
        super().__init__(model, cache)
        self._chat = chat
        self._llm_kwargs = llm_kwargs
        self.llm: Any = None
        if llm_kwargs.get("llm") is not None:
            self._attach(llm_kwargs.pop("llm"))

    @classmethod
    def from_llm(cls, llm: Any, model: str, cache: GenerationCache | None = None, chat: bool | str = "auto") -> VLLMBackend:
        """Wrap an already built ``vllm.LLM`` (benchmarks; sharing one engine)."""
        return cls(model, cache, chat=chat, llm=llm)

    def _engine(self) -> Any:
        if self.llm is None:
            try:
                import vllm
            except ImportError:
                raise ImportError("the vllm backend needs vLLM on a GPU machine: pip install vllm") from None
            self._attach(vllm.LLM(model=self.model, **self._llm_kwargs))
        return self.llm

    def _attach(self, llm: Any) -> None:
        import vllm

        self._vllm = vllm
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.chat = has_template if self._chat == "auto" else bool(self._chat)
        config = getattr(getattr(llm, "llm_engine", None), "model_config", None) or getattr(llm, "model_config", None)
        self.max_context = int(getattr(config, "max_model_len", 0) or self.tokenizer.model_max_length)

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        llm = self._engine()
        results: list[list[Completion] | None] = [None] * len(prompts)
        ids = [prompt_ids(self.tokenizer, p, self.chat) for p in prompts]
        ready = []
        for i, seq in enumerate(ids):
            why = too_long(len(seq), params, self.max_context)
            if why:
                results[i] = failed(why, params.n, len(seq))
            else:
                ready.append(i)
        if ready:
            inputs = [{"prompt_token_ids": ids[i]} for i in ready for _ in range(params.n)]
            sps = [self._vllm.SamplingParams(**sample_params(params, j)) for _ in ready for j in range(params.n)]
            outs = iter(llm.generate(inputs, sps, use_tqdm=False))
            for i in ready:
                samples = [next(outs).outputs[0] for _ in range(params.n)]
                results[i] = [Completion(o.text, len(ids[i]), len(o.token_ids),
                                         finish(len(o.token_ids), params, o.finish_reason)) for o in samples]
        return [r if r is not None else failed("not generated", params.n) for r in results]

    def close(self) -> None:
        self.llm = None
