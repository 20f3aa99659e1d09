"""The public Python API: a `SpeculativeDecoder` over a draft and a target model, and the verification functions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from edgespec.models.bundle import bundled_path
from edgespec.models.device import device_options
from edgespec.models.decoder import GenerationConfig, GenerationResult, generate_ad, generate_sd
from edgespec.models.prompting import encode_chat, encode_text, has_chat_template
from edgespec.models.runtime import CausalLM, check_same_tokenizer
from edgespec.spec.sampling import SamplingParams, probs_from_logits
from edgespec.spec.theory import expected_tokens_per_round, leviathan_speedup, odld_gamma, tkslt_speedup
from edgespec.spec.verify import DraftBatch, DraftError, DraftLimits, VerifyResult, validate_draft, verify

__all__ = [
    "SpeculativeDecoder",
    "GenerationConfig",
    "GenerationResult",
    "SamplingParams",
    "CausalLM",
    "DraftBatch",
    "DraftError",
    "DraftLimits",
    "VerifyResult",
    "verify",
    "validate_draft",
    "probs_from_logits",
    "expected_tokens_per_round",
    "leviathan_speedup",
    "tkslt_speedup",
    "odld_gamma",
]

Prompt = Union[str, Sequence[int]]


class SpeculativeDecoder:
    """Generate with a target model, speculatively (a draft proposes, the target verifies) or autoregressively.

    >>> dec = SpeculativeDecoder.bundled()
    >>> out = dec.generate("def fibonacci(n):", max_new_tokens=32)
    >>> out.text, out.acceptance_rate
    """

    def __init__(self, target: CausalLM, draft: Optional[CausalLM] = None):
        if draft is not None:
            check_same_tokenizer(draft, target)
        self.target, self.draft = target, draft

    @classmethod
    def load(
        cls, target_dir: str | Path, draft_dir: str | Path | None = None, device: str = "cpu", dtype: str = "float32",
        cuda_graphs: Optional[bool] = None,
    ) -> "SpeculativeDecoder":
        """Load Hugging Face checkpoints from local directories, or GGUF files (converted once and cached), onto `device`
        ("cpu", "cuda", "cuda:N"), the target in `dtype`.

        The draft runs in `dtype` too, except that with float32 it keeps its own `edgespec.json` CPU dtype (its numerics
        change acceptance, never the output). `cuda_graphs` (default: on for CUDA) replays decode and verify steps as CUDA
        graphs. An unusable device or dtype raises `edgespec.models.device.DeviceError` (a ValueError) before anything loads.
        """
        opts = device_options(device, dtype, cuda_graphs)
        where = {"device": opts.device, "cuda_graphs": opts.cuda_graphs}
        draft_dtype = None if opts.dtype == torch.float32 else opts.dtype
        draft = CausalLM.load(draft_dir, dtype=draft_dtype, **where) if draft_dir is not None else None
        return cls(CausalLM.load(target_dir, dtype=opts.dtype, **where), draft)

    @classmethod
    def bundled(cls, device: str = "cpu", dtype: str = "float32", cuda_graphs: Optional[bool] = None) -> "SpeculativeDecoder":
        """The draft/target code-completion pair shipped with edgespec."""
        return cls.load(bundled_path("target"), bundled_path("draft"), device, dtype, cuda_graphs)

    @classmethod
    def pair(cls, name: str, device: str = "cpu", dtype: str = "float32", cuda_graphs: Optional[bool] = None) -> "SpeculativeDecoder":
        """A named pair ("bundled", "smollm2"), fetched into the user's cache on first use (`edgespec models fetch`)."""
        from edgespec.models.catalog import pair_dirs

        draft_dir, target_dir = pair_dirs(name)
        return cls.load(target_dir, draft_dir, device, dtype, cuda_graphs)

    def encode(self, prompt: Prompt) -> list[int]:
        """Text is tokenized with the tokenizer's defaults (its post-processor decides on BOS); id lists pass through."""
        return encode_text(self.target.tokenizer, prompt) if isinstance(prompt, str) else list(prompt)

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.target.tokenizer)

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        """Chat messages rendered by the target's chat template, ready for the assistant's answer."""
        return encode_chat(self.target.tokenizer, messages)

    def chat(self, messages: Sequence[dict], **settings) -> GenerationResult:
        """The assistant's answer to chat `messages` ({"role", "content"} dicts); settings as for `generate`."""
        return self.generate(self.encode_chat(messages), **settings)

    def generate(
        self,
        prompt: Union[Prompt, list[Prompt]],
        *,
        mode: str = "sd",
        max_new_tokens: int = 64,
        gamma: int = 4,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        q_mode: str = "full",
        q_top_k: int = 8,
        seed: Optional[int] = None,
        stop_at_eos: bool = True,
    ) -> Union[GenerationResult, list[GenerationResult]]:
        """Generate for one prompt (returns a result) or a list of prompts (returns a list, batched).

        Sampled output with a `seed` is a deterministic function of (seed, prompt, sampling settings): the same for
        AD and SD, any γ and q mode, and the same as a served request with that seed (Gumbel-max coupling,
        `edgespec.spec.coupling`). Without one, SD verifies by standard rejection sampling (its highest
        acceptance) from a generator seeded with 0.
        """
        single = isinstance(prompt, str) or (len(prompt) > 0 and isinstance(prompt[0], int))
        prompts = [self.encode(p) for p in ([prompt] if single else prompt)]
        cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            sampling=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p),
            gamma=gamma,
            q_mode=q_mode,
            q_top_k=q_top_k,
            seed=0 if seed is None else seed,
            stop_at_eos=stop_at_eos,
            coupled=seed is not None,
        )
        if mode == "ad":
            results = generate_ad(self.target, prompts, cfg)
        elif mode == "sd":
            if self.draft is None:
                raise ValueError("speculative decoding needs a draft model; load one or use mode='ad'")
            results = generate_sd(self.draft, self.target, prompts, cfg)
        else:
            raise ValueError(f"mode must be 'ad' or 'sd', got {mode!r}")
        return results[0] if single else results
