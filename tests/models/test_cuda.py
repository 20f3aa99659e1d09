"""The runtime, decoder and verifier on CUDA (skipped where no CUDA device exists, as in CI)."""

import pytest
import torch

from edgespec.models.decoder import GenerationConfig, generate_ad, generate_sd
from edgespec.models.runtime import CausalLM
from edgespec.spec.sampling import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)"),
]


@pytest.fixture(scope="module")
def cuda_pair(toy_pair):
    draft, target = toy_pair
    return CausalLM.load(draft.path, device="cuda"), CausalLM.load(target.path, device="cuda")


def test_greedy_sd_equals_ad_on_cuda(cuda_pair):
    draft, target = cuda_pair
    prompts = [[3, 4, 5], [9, 8, 7, 6, 5, 4], [2]]
    cfg = GenerationConfig(max_new_tokens=20, gamma=4, stop_at_eos=False)
    assert [r.token_ids for r in generate_sd(draft, target, prompts, cfg)] == [r.token_ids for r in generate_ad(target, prompts, cfg)]


def test_sampled_sd_same_tokens_on_cpu_and_cuda(toy_pair, cuda_pair):
    """Uniforms come from one CPU generator, so a seed means the same draws on either device (up to float ties)."""
    cfg = GenerationConfig(max_new_tokens=12, gamma=3, sampling=SamplingParams(temperature=1.0), q_mode="topk", seed=5, stop_at_eos=False)
    cpu = generate_sd(*toy_pair, [[3, 4, 5]], cfg)[0]
    gpu = generate_sd(*cuda_pair, [[3, 4, 5]], cfg)[0]
    assert len(gpu.token_ids) == 12
    assert sum(a == b for a, b in zip(cpu.token_ids, gpu.token_ids)) >= 10
