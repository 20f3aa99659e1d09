"""Position-keyed Gumbel-max coupling: the noise, the rule on ragged batches, and the emitted distribution of a round."""

import numpy as np
import pytest
import torch

from edgespec.spec.coupling import block_noise, coupled_tokens, gumbel_noise, noise_rows, verify_coupled
from edgespec.spec.verify import DraftBatch

from lossless_stats import assert_matches

V = 6


# ---------------------------------------------------------------- the noise


def test_noise_is_a_pure_function_of_seed_and_position():
    a = gumbel_noise(7, 3, 64)
    assert a.dtype == np.float64 and a.shape == (64,)
    assert np.array_equal(a, gumbel_noise(7, 3, 64))
    assert not np.array_equal(a, gumbel_noise(7, 4, 64))
    assert not np.array_equal(a, gumbel_noise(8, 3, 64))
    assert np.array_equal(gumbel_noise(7, 3, 10), a[:10])  # a prefix of the counter stream: any vocabulary size
    assert np.isfinite(gumbel_noise(2**64 - 1, 2**32 - 1, 8)).all()  # the whole uint64 seed range


def test_noise_known_values():
    """numpy's Philox is Random123's Philox4x64-10 (its known-answer vector, key 0, counter 0), and the noise is fixed
    by its stream, so these values hold on every platform and numpy version (numpy increments the counter first)."""
    kat = np.random.Philox(key=np.zeros(2, np.uint64), counter=np.full(4, 2**64 - 1, np.uint64)).random_raw(4)
    assert [hex(int(x)) for x in kat] == ["0x16554d9eca36314c", "0xdb20fe9d672d0fdc", "0xd7e772cee186176b", "0x7e68b68aec7ba23b"]
    raw = np.random.Philox(key=np.array([5, 9], np.uint64)).random_raw(3)
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    assert np.array_equal(gumbel_noise(5, 9, 3), -np.log(-np.log(u)))
    assert gumbel_noise(0, 0, 3).tolist() == pytest.approx([-1.495451611577, -0.351137118361, -0.785906784151], abs=1e-11)


def test_noise_is_standard_gumbel():
    g = np.concatenate([gumbel_noise(s, 0, 1000) for s in range(50)])  # 50 000 draws
    assert g.mean() == pytest.approx(np.euler_gamma, abs=0.03)
    assert g.var() == pytest.approx(np.pi**2 / 6, rel=0.05)
    edges = np.quantile(g, [0.1, 0.5, 0.9])
    cdf = np.exp(-np.exp(-edges))
    assert cdf == pytest.approx([0.1, 0.5, 0.9], abs=0.01)


def test_noise_rows_and_block_noise_layout():
    rows = noise_rows([1, 2], [5, 0], V)
    assert rows.shape == (2, V) and rows.dtype == torch.float64
    assert torch.equal(rows[1], torch.from_numpy(gumbel_noise(2, 0, V)))
    draft = DraftBatch.from_blocks([[1, 2], [], [3]])  # rows: seq 0 at positions 10, 11, 12; seq 1 at 4; seq 2 at 7, 8
    noise = block_noise(draft, [9, 8, 7], [10, 4, 7], V)
    want = [(9, 10), (9, 11), (9, 12), (8, 4), (7, 7), (7, 8)]
    assert noise.shape == (6, V)
    for r, (s, j) in enumerate(want):
        assert torch.equal(noise[r], torch.from_numpy(gumbel_noise(s, j, V)))
    with pytest.raises(ValueError, match="seed and a position per sequence"):
        block_noise(draft, [1], [1, 2, 3], V)


# ---------------------------------------------------------------- the rule on ragged batches


def _fixed(tokens_per_row, support=None):
    """Probabilities and noise whose coupled token per row is `tokens_per_row`: noise 0, p peaked at the token."""
    rows = len(tokens_per_row)
    p = torch.full((rows, V), 0.1)
    p[torch.arange(rows), torch.tensor(tokens_per_row)] = 1.0
    if support is not None:
        p[:, support] = 0.0
    return p / p.sum(-1, keepdim=True), torch.zeros(rows, V, dtype=torch.float64)


def test_all_accepted_first_rejected_and_gamma_zero_in_one_ragged_batch():
    # seq 0: γ = 3, y = [2, 4, 1 | 5]: drafts [2, 4, 1] all accepted, bonus 5
    # seq 1: γ = 0, y = [3]: bonus 3
    # seq 2: γ = 2, y = [0, 1 | 2]: drafts [4, 1]: first rejected, emit y = 0 (not bonus)
    # seq 3: γ = 2, y = [1, 3 | 0]: drafts [1, 2]: one accepted, emit 3
    p, noise = _fixed([2, 4, 1, 5, 3, 0, 1, 2, 1, 3, 0])
    draft = DraftBatch.from_blocks([[2, 4, 1], [], [4, 1], [1, 2]])
    out = verify_coupled(p, draft, noise)
    assert out.num_accepted.tolist() == [3, 0, 0, 1]
    assert out.next_tokens.tolist() == [5, 3, 0, 3]
    assert out.is_bonus.tolist() == [True, True, False, False]


def test_rule_ignores_q_and_never_emits_outside_the_support():
    p, noise = _fixed([1, 1])
    p[:, 1] = 0.0  # the noise-free argmax is outside the support now
    p = p / p.sum(-1, keepdim=True)
    noise[:, 1] = 50.0  # huge noise on the impossible token changes nothing: log 0 = −inf
    full_q = torch.full((1, V), 1.0 / V)
    for draft in (DraftBatch.from_blocks([[1]]), DraftBatch(torch.tensor([1]), torch.tensor([0, 1]), "full", full_q)):
        out = verify_coupled(p, draft, noise)
        assert out.num_accepted.tolist() == [0] and out.next_tokens.item() != 1


def test_rule_emits_coupled_tokens_whatever_was_drafted():
    """For random p and noise, the emitted tokens are the Gumbel-max tokens of the rows, for every draft."""
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, V, generator=gen), -1)
    noise = noise_rows([3] * 4, [0, 1, 2, 3], V)
    y = coupled_tokens(p, noise).tolist()
    for drafted in ([y[0], y[1], y[2]], [y[0], (y[1] + 1) % V, y[2]], [(y[0] + 1) % V, y[1], y[2]]):
        out = verify_coupled(p, DraftBatch.from_blocks([drafted]), noise)
        n = out.num_accepted.item()
        assert drafted[:n] == y[:n] and out.next_tokens.item() == y[n]


def test_rule_checks_shapes():
    with pytest.raises(ValueError, match="same shape"):
        verify_coupled(torch.full((2, V), 1.0 / V), DraftBatch.from_blocks([[1]]), torch.zeros(3, V))


# ---------------------------------------------------------------- distribution of one round, over seeds

N = 20_000
GAMMA = 2


@pytest.mark.parametrize("drafter", ["coupled_honest", "worst_token", "random"])
def test_coupled_round_is_lossless_over_seeds(drafter):
    """The first emitted token of N rounds (one per seed) follows p[0], whatever the drafter sends."""
    torch.manual_seed(21)  # Dirichlet draws in the test fixtures only
    p = torch.distributions.Dirichlet(torch.full((V,), 0.7)).sample((GAMMA + 1,))  # [γ+1, V]
    p[:, 0] = 0.0
    p = p / p.sum(-1, keepdim=True)
    q = torch.distributions.Dirichlet(torch.ones(V)).sample((GAMMA,))  # the honest drafter's own distribution
    vocab_noise = np.stack([np.stack([gumbel_noise(s, j, V) for j in range(GAMMA + 1)]) for s in range(N)])  # [N, γ+1, V]
    noise = torch.from_numpy(vocab_noise).reshape(-1, V)
    if drafter == "coupled_honest":
        tokens = coupled_tokens(q.repeat(N, 1), torch.from_numpy(vocab_noise[:, :GAMMA]).reshape(-1, V)).view(N, GAMMA)
    elif drafter == "worst_token":
        tokens = p[:GAMMA].argmin(-1).expand(N, GAMMA).contiguous()
    else:
        tokens = torch.randint(0, V, (N, GAMMA), generator=torch.Generator().manual_seed(5))
    draft = DraftBatch(tokens.reshape(-1), torch.arange(N + 1) * GAMMA, "tokens")
    out = verify_coupled(p.repeat(N, 1), draft, noise)
    first = torch.where(out.num_accepted > 0, tokens[:, 0], out.next_tokens)
    assert_matches(torch.bincount(first, minlength=V), p[0])
