"""`edgespec serve --device D` with two CPU drafter nodes (`edgespec edge`), real processes on loopback: every greedy HTTP completion equals target-only AD on D (CUDA where there is a GPU; the CPU run proves the check itself)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from edgespec.bench.prompts import PROMPTS
from edgespec.demo.nodes import post_json, start_node, stop_all
from edgespec.models.bundle import bundled_path
from edgespec.models.decoder import GenerationConfig, generate_ad
from edgespec.models.runtime import CausalLM

MAX_TOKENS = 32
EDGES = {  # two drafter nodes, both on the CPU (edge devices), drafting differently
    "edge-topk": ["--q-mode", "topk", "--top-k", "8", "--gamma-policy", "heuristic"],
    "edge-tokens": ["--q-mode", "tokens", "--gamma-policy", "static", "--gamma", "5"],
}
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")])


def _ad_texts(device: str) -> list[str]:
    """Greedy target-only decoding of every prompt on `device` (BOS first, as the HTTP API encodes text)."""
    target = CausalLM.load(bundled_path("target"), device=device)
    bos = target.tokenizer.bos_token_id
    prompts = [([bos] if bos is not None else []) + target.tokenize(p) for p in PROMPTS]
    cfg = GenerationConfig(max_new_tokens=MAX_TOKENS)
    return [r.text for r in generate_ad(target, prompts, cfg)]


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_served_greedy_completions_equal_ad(device):
    nodes = []
    try:
        verifier = start_node("verifier", "serve", ["--port", "0", "--device", device], threads=2, timeout_s=300)
        nodes.append(verifier)
        edges = {name: start_node(name, "edge", ["--verifier", verifier.address, "--http-port", "0", "--node-id", name, "--threads", "1", *args],
                                  threads=1, timeout_s=300) for name, args in EDGES.items()}
        nodes += edges.values()
        jobs = [(name, i) for name in edges for i in range(len(PROMPTS))]

        def complete(job):
            name, i = job
            body = {"model": "bundled", "prompt": PROMPTS[i], "max_tokens": MAX_TOKENS, "temperature": 0}
            return post_json(f"{edges[name].url}/v1/completions", body, timeout_s=300)

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:  # every session at once: the verifier batches them
            replies = dict(zip(jobs, pool.map(complete, jobs)))
    finally:
        stop_all(nodes)
    expected = _ad_texts(device)
    for (name, i), reply in replies.items():
        assert reply["choices"][0]["text"] == expected[i], f"{name}, prompt {i}"
        assert reply["edgespec"]["rounds"] < reply["usage"]["completion_tokens"]  # speculation happened
