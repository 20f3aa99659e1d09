"""The runtime, decoder and verifier on CUDA: greedy SD ≡ AD (toy and bundled pair, CUDA graphs on and off), CUDA-graph steps ≡ eager steps, the verifier runner, timing helpers (skipped where no CUDA device exists, as in CI)."""

import pytest
import torch

from edgespec.bench.sd_vs_ad import prompt_ids
from edgespec.models.bundle import bundled_path
from edgespec.models.decoder import GenerationConfig, generate_ad, generate_sd
from edgespec.models.device import StepClock, timed_s, upload
from edgespec.models.graphs import StaticCache
from edgespec.models.runtime import CausalLM, put_rows, resize_rows, take_rows
from edgespec.spec.sampling import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)"),
]


@pytest.fixture(scope="module")
def cuda_pair(toy_pair):
    draft, target = toy_pair
    return CausalLM.load(draft.path, device="cuda"), CausalLM.load(target.path, device="cuda")


@pytest.fixture(scope="module", params=["graphs", "eager"])
def bundled_cuda(request):
    """The bundled pair on CUDA in float32, with CUDA graphs (the default) or without."""
    graphs = request.param == "graphs"
    return tuple(CausalLM.load(bundled_path(role), device="cuda", cuda_graphs=graphs) for role in ("draft", "target"))


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


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_bundled_greedy_sd_equals_ad_on_cuda(bundled_cuda, gamma):
    """The bundled pair, float32: every benchmark prompt alone and all of them as one ragged batch."""
    draft, target = bundled_cuda
    prompts = prompt_ids(target)
    cfg = GenerationConfig(max_new_tokens=48, gamma=gamma, stop_at_eos=False)
    ad = [r.token_ids for r in generate_ad(target, prompts, cfg)]
    assert [r.token_ids for r in generate_sd(draft, target, prompts, cfg)] == ad
    for p, want in zip(prompts[:3], ad):
        assert generate_sd(draft, target, [p], cfg)[0].token_ids == want


# ---------------------------------------------------------------- CUDA graphs ≡ eager


def _script(lm: CausalLM) -> list[torch.Tensor]:
    """Decode and verify steps over a ragged cache with crops, holes, growth and row surgery; every step's logits."""
    kv = lm.new_kv(3)
    outs = [lm.prefill(kv, [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]])]
    for step in range(40):  # long enough to grow the arena and compact the holed cache
        outs.append(lm.forward(kv, [[20 + step, 21, 22, 23, 24], [30 + step], [40 + step, 41, 42]]))
        lm.crop_rows(kv, {0: kv.length(0) - 3, 2: kv.length(2) - 1})
        outs.append(lm.decode(kv, [50 + step, 51, 52]))
    kv = resize_rows(lm, kv, 5)
    sub = take_rows(lm, kv, [1, 3])
    outs.append(lm.forward(sub, [[60, 61], [62, 63, 64]]))
    kv = put_rows(lm, kv, sub, [1, 3])
    outs.append(lm.forward(kv, [[70], [71], [72], [73], [74]]))
    return outs


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graph_steps_equal_eager_steps(dtype):
    target = CausalLM.load(bundled_path("target"), device="cuda", dtype=dtype, cuda_graphs=True)
    eager = CausalLM.load(bundled_path("target"), device="cuda", dtype=dtype, cuda_graphs=False)
    graphed = _script(target)
    assert isinstance(target.new_kv(1).cache, StaticCache)
    assert sum(a.captures for a in target._arenas) > 0  # graphs were really captured and replayed
    for g, e in zip(graphed, _script(eager)):
        if dtype == "float32":
            torch.testing.assert_close(g, e, atol=2e-4, rtol=2e-4)
            assert torch.equal(g.argmax(-1), e.argmax(-1))
        else:  # padded rows and masked columns change the kernels' summation order: equal to bf16 resolution
            tolerance = 0.03 * e.abs().max()
            assert (g - e).abs().max() <= tolerance
            at_eager_choice = g.gather(-1, e.argmax(-1, keepdim=True)).squeeze(-1)
            assert (g.max(-1).values - at_eager_choice).max() <= tolerance  # eager's argmax is (near-)tied best for the graphs
            assert torch.nn.functional.cosine_similarity(g, e, dim=-1).min() > 0.999


def test_graph_mode_matches_the_cpu(bundled_cuda):
    _, target = bundled_cuda
    cpu = CausalLM.load(bundled_path("target"))
    for g, c in zip(_script(target), _script(cpu)):
        torch.testing.assert_close(g.cpu(), c, atol=2e-3, rtol=2e-3)


# ---------------------------------------------------------------- verifier runner and helpers


def test_runner_on_cuda_gives_ad_output(bundled_cuda):
    from runner_helpers import greedy_through_runner

    _, target = bundled_cuda
    prompts = prompt_ids(target)[:4]
    expected = [r.token_ids for r in generate_ad(target, prompts, GenerationConfig(max_new_tokens=24, stop_at_eos=False))]
    assert greedy_through_runner(target, prompts, expected, 24) == expected


def test_upload_and_timing_on_cuda():
    dev = torch.device("cuda")
    t = torch.arange(10)
    moved = upload(t, dev)
    assert moved.is_cuda and moved.tolist() == t.tolist()
    a = torch.randn(2048, 2048, device=dev)
    assert timed_s(lambda: a @ a, dev) > 0
    clock = StepClock(dev)
    b = a @ a
    clock.stop()
    assert b.shape == a.shape and clock.seconds() > 0
