"""benchmarks/topk_acceptance.py's exact acceptance per position equals what the verifier's rejection rule does, for full, top-K and tokens-only q."""

import sys
from pathlib import Path

import torch

from edgespec.spec.sampling import sparsify_topk
from edgespec.spec.verify import DraftBatch, verify_probs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from topk_acceptance import block_rate, per_position  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))


def _monte_carlo(p: torch.Tensor, q: torch.Tensor, mode: str, k: int, draws: int, gen: torch.Generator) -> torch.Tensor:
    """Acceptance rate per position [N] of one-token drafts x ~ q' verified by `verify_probs` with q' as `mode` sends it."""
    n, vocab = p.shape
    if mode == "topk":
        ids, kept = sparsify_topk(q, k)  # [N, K]
        dense = torch.zeros_like(q).scatter(-1, ids, kept)
    else:
        dense = q
    pos = torch.arange(n).repeat(draws)  # [M·N] the position of each draft
    x = torch.multinomial(dense[pos], 1, generator=gen).squeeze(-1)  # [M·N]
    blocks = [[int(t)] for t in x]
    if mode == "full":
        draft = DraftBatch.from_blocks(blocks, "full", q[pos])
    elif mode == "topk":
        draft = DraftBatch.from_blocks(blocks, "topk", kept[pos], ids[pos])
    else:
        draft = DraftBatch.from_blocks(blocks)
    target = p[pos].repeat_interleave(2, dim=0)  # [2·M·N, V]: each block's drafted row and its bonus row
    accepted = verify_probs(target, draft, gen).num_accepted.double()  # [M·N] 0 or 1
    return torch.zeros(n, dtype=torch.double).index_add_(0, pos, accepted) / draws


def test_exact_acceptance_matches_the_rejection_rule():
    gen = torch.Generator().manual_seed(0)
    n, vocab, k, draws = 4, 40, 3, 4000
    p = torch.distributions.Dirichlet(torch.full((vocab,), 0.3)).sample((n,))
    q = (0.6 * p + 0.4 * torch.distributions.Dirichlet(torch.full((vocab,), 0.3)).sample((n,)))  # a draft that half agrees
    exact = per_position(p, q, [k])
    for mode, key in (("full", "full"), ("topk", f"top-{k}"), ("tokens", "tokens")):
        measured = _monte_carlo(p, q, mode, k, draws, gen)
        se = (exact[key].double() * (1 - exact[key].double()) / draws).sqrt()
        assert ((measured - exact[key].double()).abs() <= 4.5 * se + 1e-9).all(), (mode, measured, exact[key])


def test_acceptance_extremes_and_block_rate():
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    exact = per_position(p, p.clone(), [1, 4])
    assert torch.allclose(exact["full"], torch.ones(1)) and torch.allclose(exact["top-4"], torch.ones(1))
    assert torch.allclose(exact["top-1"], torch.tensor([0.5]))  # q' = one-hot on the draft's top token: accepted with p = 0.5
    assert torch.allclose(exact["tokens"], torch.tensor([0.25 + 0.09 + 0.04]))
    assert block_rate(1.0, 4) == 1.0 and block_rate(0.0, 4) == 0.0
    assert abs(block_rate(0.5, 2) - (0.5 + 0.25) / 2) < 1e-12
