"""Verification rules: validation of drafter input, greedy rule, and the emitted distribution of one round."""

import pytest
import torch

from edgespec.spec.sampling import GREEDY, SamplingParams, sparsify_topk
from edgespec.spec.verify import DraftBatch, DraftError, DraftLimits, validate_draft, verify, verify_probs

from lossless_stats import assert_matches

V = 6


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- validation


def _full_batch():
    q = torch.full((3, V), 1.0 / V)
    return DraftBatch(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 3]), "full", q)


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda b: DraftBatch(b.token_ids, b.cu_gammas, "full", b.q_probs.index_fill(0, torch.tensor([0]), float("nan"))), "q_probs"),
        (lambda b: DraftBatch(b.token_ids, b.cu_gammas, "full", b.q_probs - 0.5), "q_probs"),
        (lambda b: DraftBatch(b.token_ids, b.cu_gammas, "full", b.q_probs * 1.5), "q_probs"),
        (lambda b: DraftBatch(torch.tensor([1, 2, V]), b.cu_gammas, "full", b.q_probs), "token_ids"),
        (lambda b: DraftBatch(torch.tensor([1, -2, 3]), b.cu_gammas, "full", b.q_probs), "token_ids"),
        (lambda b: DraftBatch(b.token_ids, torch.tensor([0, 3, 2]), "full", b.q_probs), "cu_gammas"),
        (lambda b: DraftBatch(b.token_ids, torch.tensor([0, 2, 4]), "full", b.q_probs), "cu_gammas"),
        (lambda b: DraftBatch(b.token_ids, b.cu_gammas, "full", b.q_probs[:, :4]), "q_probs"),
        (lambda b: DraftBatch(b.token_ids, b.cu_gammas, "full", None), "q_probs"),
        (lambda b: DraftBatch(b.token_ids, b.cu_gammas, "bogus", b.q_probs), "q_mode"),
        (lambda b: DraftBatch(b.token_ids, b.cu_gammas, "tokens", b.q_probs), "q_probs"),
        (lambda b: DraftBatch(b.token_ids, b.cu_gammas, "full", torch.nn.functional.one_hot(torch.tensor([0, 0, 0]), V).float()), "q_probs"),
    ],
)
def test_bad_full_q_rejected_with_field(mutate, field):
    with pytest.raises(DraftError) as err:
        validate_draft(mutate(_full_batch()), V)
    assert err.value.field == field
    assert isinstance(err.value, ValueError)


def test_gamma_above_limit_rejected():
    batch = DraftBatch(torch.tensor([1, 2, 3]), torch.tensor([0, 3]), "tokens")
    with pytest.raises(DraftError, match="gamma"):
        validate_draft(batch, V, DraftLimits(max_gamma=2))


def _topk_batch(ids, probs, tokens):
    return DraftBatch(torch.tensor(tokens), torch.tensor([0, len(tokens)]), "topk", torch.tensor(probs), torch.tensor(ids))


@pytest.mark.parametrize(
    "ids,probs,tokens,field",
    [
        ([[1, 1]], [[0.5, 0.5]], [1], "q_ids"),  # duplicate ids
        ([[1, 9]], [[0.5, 0.5]], [1], "q_ids"),  # id out of range
        ([[1, 2]], [[0.5, 0.6]], [1], "q_probs"),  # does not sum to 1
        ([[1, 2]], [[1.5, -0.5]], [1], "q_probs"),  # negative
        ([[1, 2]], [[0.5, 0.5]], [3], "token_ids"),  # drafted token not in its top-K
        ([[1, 2]], [[1.0, 0.0]], [2], "token_ids"),  # drafted token has q = 0
    ],
)
def test_bad_topk_q_rejected_with_field(ids, probs, tokens, field):
    with pytest.raises(DraftError) as err:
        validate_draft(_topk_batch(ids, probs, tokens), V)
    assert err.value.field == field


def test_top_k_above_limit_rejected():
    ids, probs = torch.arange(4).view(1, 4), torch.full((1, 4), 0.25)
    with pytest.raises(DraftError, match="top_k"):
        validate_draft(DraftBatch(torch.tensor([0]), torch.tensor([0, 1]), "topk", probs, ids), V, DraftLimits(max_top_k=3))


def test_verify_checks_target_rows():
    batch = DraftBatch(torch.tensor([1, 2]), torch.tensor([0, 2]), "tokens")
    with pytest.raises(ValueError, match="target_logits"):
        verify(torch.zeros(2, V), batch, GREEDY)


# ---------------------------------------------------------------- greedy


def test_greedy_accepts_matching_prefix_then_emits_argmax():
    # sequence 0: γ=3, target argmax per row = [2, 4, 1, 5] -> drafts [2, 4, 0]: 2 accepted, recovered 1
    # sequence 1: γ=0 -> bonus = argmax of its single row (3)
    # sequence 2: γ=2, drafts match -> 2 accepted, bonus = argmax of row 3 (0)
    argmax = [2, 4, 1, 5, 3, 1, 1, 0]
    logits = torch.nn.functional.one_hot(torch.tensor(argmax), V).float()
    batch = DraftBatch.from_blocks([[2, 4, 0], [], [1, 1]])
    out = verify(logits, batch, GREEDY)
    assert out.num_accepted.tolist() == [2, 0, 2]
    assert out.next_tokens.tolist() == [1, 3, 0]
    assert out.is_bonus.tolist() == [False, True, True]


def test_greedy_ties_go_to_lowest_id():
    logits = torch.tensor([[0.0, 5.0, 5.0, 1.0, 0.0, 0.0]])
    out = verify(logits, DraftBatch.from_blocks([[]]), GREEDY)
    assert out.next_tokens.tolist() == [1]


# ---------------------------------------------------------------- distribution of one round

N = 40_000
GAMMA = 3


def _target_probs(gen):
    p = torch.distributions.Dirichlet(torch.full((V,), 0.7)).sample((GAMMA + 1,))  # [γ+1, V] per position
    p[:, 0] = 0.0  # a token the target never emits (as after top-k / top-p)
    return p / p.sum(-1, keepdim=True)


def _round(p, q_rows, tokens, mode, q_ids=None):
    """N independent rounds of γ drafts against the same target rows; returns the first emitted token."""
    batch = DraftBatch(tokens.reshape(-1), torch.arange(N + 1) * GAMMA, mode, q_rows, q_ids)
    validate_draft(batch, V)
    target = p.repeat(N, 1)  # [N(γ+1), V]
    out = verify_probs(target, batch, _gen(7))
    first = torch.where(out.num_accepted > 0, tokens[:, 0], out.next_tokens)
    return torch.bincount(first, minlength=V)


def _sample_from(q, gen):  # q [N, γ, V]
    return torch.multinomial(q.reshape(-1, V), 1, generator=gen).view(N, GAMMA)


QS = {
    "honest": lambda p, g: torch.distributions.Dirichlet(torch.ones(V)).sample((N, GAMMA)),
    "uniform": lambda p, g: torch.full((N, GAMMA, V), 1.0 / V),
    "adversarial": lambda p, g: ((1.0 / (p[:GAMMA] + 0.01)) ** 3 / ((1.0 / (p[:GAMMA] + 0.01)) ** 3).sum(-1, keepdim=True)).expand(N, GAMMA, V).contiguous(),
    "near_target": lambda p, g: (0.9 * p[:GAMMA] + 0.1 / V).expand(N, GAMMA, V).contiguous(),
}


@pytest.mark.parametrize("q_name", sorted(QS))
def test_full_q_round_is_lossless(q_name):
    gen = _gen(1)
    torch.manual_seed(11)  # Dirichlet draws in the test fixtures only
    p = _target_probs(gen)
    q = QS[q_name](p, gen)
    tokens = _sample_from(q, gen)
    counts = _round(p, q.reshape(-1, V), tokens, "full")
    assert_matches(counts, p[0])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_topk_q_round_is_lossless(k):
    gen = _gen(2)
    torch.manual_seed(12)
    p = _target_probs(gen)
    q_full = torch.distributions.Dirichlet(torch.ones(V)).sample((N, GAMMA)).reshape(-1, V)
    ids, kept = sparsify_topk(q_full, k)
    choice = torch.multinomial(kept, 1, generator=gen)
    tokens = ids.gather(1, choice).view(N, GAMMA)
    counts = _round(p, kept, tokens, "topk", ids)
    assert_matches(counts, p[0])


@pytest.mark.parametrize("how", ["sampled", "worst_token", "best_token"])
def test_tokens_only_is_lossless_for_any_token_choice(how):
    """One-hot q: whatever tokens the drafter sends (even chosen adversarially), the output follows p."""
    gen = _gen(3)
    torch.manual_seed(13)
    p = _target_probs(gen)
    if how == "sampled":
        tokens = _sample_from(torch.full((N, GAMMA, V), 1.0 / V), gen)
    else:
        pick = p[:GAMMA].argmin(-1) if how == "worst_token" else p[:GAMMA].argmax(-1)
        tokens = pick.expand(N, GAMMA).contiguous()
    counts = _round(p, None, tokens, "tokens")
    assert_matches(counts, p[0])


def test_acceptance_rate_matches_theory():
    """Per-position acceptance with full q equals Σ min(p, q)."""
    gen = _gen(4)
    torch.manual_seed(14)
    p = _target_probs(gen)
    q = QS["near_target"](p, gen)
    tokens = _sample_from(q, gen)
    batch = DraftBatch(tokens.reshape(-1), torch.arange(N + 1) * GAMMA, "full", q.reshape(-1, V))
    out = verify_probs(p.repeat(N, 1), batch, _gen(5))
    rate = (out.num_accepted > 0).float().mean().item()
    expected = torch.minimum(p[0], q[0, 0]).sum().item()
    assert rate == pytest.approx(expected, abs=4 * (expected * (1 - expected) / N) ** 0.5)


def test_verify_with_sampling_params_uses_same_p():
    """verify() applies temperature/top-k to logits exactly like AD: a token outside top-k is never emitted."""
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0]]).repeat(2000, 1)
    batch = DraftBatch(torch.zeros(0, dtype=torch.long), torch.zeros(2001, dtype=torch.long), "tokens")
    out = verify(logits, batch, SamplingParams(temperature=1.0, top_k=2), _gen(6))
    assert set(out.next_tokens.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="Generator"):
        verify(logits, batch, SamplingParams(temperature=1.0))
