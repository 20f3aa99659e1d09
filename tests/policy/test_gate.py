"""The speculation gate and the verifier's forward-time model: speculation steps aside where the verifier's load makes it lose, and comes back."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgespec.policy.gamma import RoundObservation, StaticGamma, make_gamma_policy
from edgespec.policy.gate import LoadAwareGamma, ModelGamma, SpeculationGate
from edgespec.policy.load import ForwardCost, ForwardCostFit, VerifierHints

# a CPU-like verifier: every position of every row costs (compute-bound); a GPU-like one: a big fixed part (memory-bound)
COMPUTE_BOUND = ForwardCost(base_s=0.002, per_position_s=0.0012, per_row_s=0.0)
MEMORY_BOUND = ForwardCost(base_s=0.030, per_position_s=0.00002, per_row_s=0.00005)


def _round(drafted: int, accepted: int, cost: ForwardCost, rows: float, width: float, draft_s: float = 0.002) -> RoundObservation:
    """One verdict as the drafter node sees it: the batch's forward by the verifier's own model, loopback wire time."""
    forward = cost.seconds(rows, width)
    return RoundObservation(drafted, accepted, draft_time_s=draft_s * drafted if drafted else None, verify_time_s=forward,
                            rtt_s=forward + 0.001, forward_s=forward, busy_wait_s=0.0,
                            hints=VerifierHints(0, int(rows), forward, rows, width, cost))


def _drive(policy, cost: ForwardCost, rows: float, rounds: int = 40, accept_rate: float = 0.8) -> list[int]:
    """Run `rounds` rounds at a verifier with `rows` rows per forward; every session drafting what this one drafts."""
    gammas = []
    for _ in range(rounds):
        g = policy.gamma()
        gammas.append(g)
        accepted = int(round(accept_rate * g))
        policy.observe(_round(g, accepted, cost, rows, g + 1))
    return gammas


def test_forward_cost_fit_recovers_the_model_and_keeps_it_nonnegative():
    truth = ForwardCost(0.004, 0.0005, 0.0002)
    fit = ForwardCostFit()
    est = fit.fit_points([(r, w, truth.seconds(r, w)) for r in (1, 4, 16) for w in (1, 3, 5)])
    assert est.base_s == pytest.approx(truth.base_s, rel=1e-4)
    assert est.per_position_s == pytest.approx(truth.per_position_s, rel=1e-4)
    assert est.per_row_s == pytest.approx(truth.per_row_s, rel=1e-3)
    # times that fall with rows would give a negative slope: that term is dropped, the others refitted
    falling = ForwardCostFit().fit_points([(r, 1, 0.01 - 0.0001 * r) for r in (1, 2, 4, 8)])
    assert min(falling.base_s, falling.per_position_s, falling.per_row_s) >= 0.0


def test_forward_cost_fit_keeps_the_calibrated_split_where_the_data_cannot_tell_the_terms_apart():
    prior = ForwardCost(0.002, 0.0006, 0.0002)
    fit = ForwardCostFit(prior=prior)
    for rows in range(1, 25):  # only γ = 0 rounds (width 1): per-position and per-row costs are collinear
        fit.observe(rows, 1, 0.002 + 0.0008 * rows)
    est = fit.cost()
    assert est.per_position_s + est.per_row_s == pytest.approx(0.0008, rel=0.05)
    assert est.per_position_s == pytest.approx(0.0006, rel=0.1)  # the prior's split survives
    assert ForwardCostFit(prior=prior).cost() == prior  # before any forward: the prior


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 0.05), st.floats(0.0, 0.01), st.floats(0.0, 0.01), st.floats(1, 64), st.floats(1, 17))
def test_forward_cost_grows_with_rows_and_width(base, per_pos, per_row, rows, width):
    cost = ForwardCost(base, per_pos, per_row)
    assert cost.seconds(rows + 1, width) >= cost.seconds(rows, width)
    assert cost.seconds(rows, width + 1) >= cost.seconds(rows, width)
    with pytest.raises(ValueError):
        ForwardCost(-1e-3, per_pos, per_row)


def test_gate_settles_at_ad_where_verification_is_compute_bound_and_many_sessions_share_it():
    policy = LoadAwareGamma(StaticGamma(4))
    gammas = _drive(policy, COMPUTE_BOUND, rows=24)
    assert policy.gate.gated
    assert gammas[-10:] == [0] * 10  # settled: no speculation while it loses
    tau_sd, tau_ad = policy.gate.predicted_taus()
    assert tau_ad < tau_sd


def test_gate_keeps_speculating_where_verification_is_memory_bound():
    policy = LoadAwareGamma(StaticGamma(4))
    gammas = _drive(policy, MEMORY_BOUND, rows=24)
    assert not policy.gate.gated and policy.gate.switches == 0
    assert gammas == [4] * len(gammas)


def test_gate_speculates_at_one_session_even_on_a_compute_bound_verifier():
    """One session: a 5-position pass costs far less than 5 decode steps (the fixed part), so γ = 4 pays."""
    policy = LoadAwareGamma(StaticGamma(4))
    cost = ForwardCost(base_s=0.012, per_position_s=0.0012, per_row_s=0.0)
    assert _drive(policy, cost, rows=1)[-10:] == [4] * 10


def test_gate_reopens_when_the_load_drops_and_closes_again_when_it_rises():
    policy = LoadAwareGamma(StaticGamma(4))
    cost = ForwardCost(base_s=0.012, per_position_s=0.0012, per_row_s=0.0)
    assert _drive(policy, cost, rows=24)[-5:] == [0] * 5
    assert _drive(policy, cost, rows=1)[-5:] == [4] * 5  # γ = 0 rounds still bring the hints: the gate sees the load fall
    assert _drive(policy, cost, rows=24)[-5:] == [0] * 5
    assert policy.gate.switches == 3


def test_a_gate_closed_on_a_low_acceptance_retries_when_the_load_falls_and_not_while_it_stays_high():
    """Sampled requests taught the node α ≈ 0.2 and the gate closed; later greedy requests (α 0.8) at one session must get
    speculation back (the estimate ages towards its prior while nothing is learned), but not at a load where SD loses anyway."""
    cost = ForwardCost(base_s=0.012, per_position_s=0.0012, per_row_s=0.0)
    low = LoadAwareGamma(StaticGamma(4))
    assert _drive(low, cost, rows=1, rounds=60, accept_rate=0.1)[-5:] == [0] * 5  # α̂ low: speculating loses even alone
    assert _drive(low, cost, rows=1, rounds=200, accept_rate=0.8)[-5:] == [4] * 5
    busy = LoadAwareGamma(StaticGamma(4))
    _drive(busy, cost, rows=1, rounds=60, accept_rate=0.1)
    assert _drive(busy, cost, rows=24, rounds=300, accept_rate=0.8) == [0] * 300


def test_gate_does_not_flap_near_the_break_even_load():
    gate = SpeculationGate(hysteresis=0.05)
    policy = LoadAwareGamma(StaticGamma(4), gate)
    cost = ForwardCost(base_s=0.012, per_position_s=0.0012, per_row_s=0.0)
    # find the break-even batch size, then hover around it
    rows = next(r for r in range(1, 64) if _closes_at(cost, r))
    for r in [rows, rows - 1] * 20:
        _drive(policy, cost, rows=r, rounds=1)
    assert gate.switches <= 1


def _closes_at(cost: ForwardCost, rows: int) -> bool:
    policy = LoadAwareGamma(StaticGamma(4))
    _drive(policy, cost, rows=rows, rounds=20)
    return policy.gate.gated


def test_gate_stays_open_without_a_forward_model_and_probes_when_asked():
    policy = LoadAwareGamma(StaticGamma(3))
    for _ in range(5):  # a verifier that sends no forward-time model: the inner policy decides
        policy.observe(RoundObservation(3, 2, verify_time_s=0.01, rtt_s=0.012))
        assert policy.gamma() == 3
    probing = LoadAwareGamma(StaticGamma(4), probe_every=2)
    gammas = _drive(probing, COMPUTE_BOUND, rows=24, rounds=30)
    assert probing.gate.gated
    probes = [i for i, g in enumerate(gammas[-9:]) if g]  # every third round a probe refreshes the acceptance estimate
    assert len(probes) == 3 and probes[1] - probes[0] == probes[2] - probes[1] == 3
    assert set(gammas[-9:]) == {0, 4}
    with pytest.raises(ValueError):
        LoadAwareGamma(StaticGamma(4), probe_every=-1)


def test_gate_is_shared_by_a_nodes_sessions_and_adaptive_is_the_gates_model_behind_it():
    state: dict = {}
    a = make_gamma_policy("adaptive", 4, 8, node_state=state)
    b = make_gamma_policy("static", 4, 8, node_state=state, load_aware=True)
    c = make_gamma_policy("awc", 4, 8, node_state=state, load_aware=True)
    assert isinstance(a, LoadAwareGamma) and isinstance(b, LoadAwareGamma)
    assert a.gate is b.gate is c.gate is SpeculationGate.of(state)
    assert isinstance(a.inner, ModelGamma) and a.inner.gate is a.gate and type(c.inner).__name__ == "AwcGamma"
    _drive(b, COMPUTE_BOUND, rows=24)
    assert a.gamma() == 0  # the node's gate closed for every session of the node
    assert not isinstance(make_gamma_policy("static", 4, 8), LoadAwareGamma)


def test_the_models_gamma_shortens_as_a_compute_bound_verifier_fills_and_stays_long_where_it_is_memory_bound():
    def settled(cost: ForwardCost, rows: float) -> int:
        policy = make_gamma_policy("adaptive", 4, 8)
        _drive(policy, cost, rows=rows, rounds=40, accept_rate=0.8)
        return policy.gamma()

    cpu = ForwardCost(base_s=0.012, per_position_s=0.0012, per_row_s=0.0)
    light, heavier = settled(cpu, 1), settled(cpu, 6)
    assert 1 <= heavier < light  # more rows per forward: each drafted position costs more of everyone's time
    assert settled(MEMORY_BOUND, 24) >= light  # a forward that barely grows with positions: long drafts pay
    assert settled(COMPUTE_BOUND, 24) == 0  # and where nothing pays, the gate closes


def test_gate_estimates_follow_the_rounds():
    gate = SpeculationGate()
    for _ in range(50):
        gate.observe(_round(4, 4, MEMORY_BOUND, 8, 5, draft_s=0.003))
    assert gate.alpha > 0.9 and gate.draft_per_token_s == pytest.approx(0.003)
    assert gate.gamma_sd == pytest.approx(4.0, abs=0.01)
    assert gate.other_s == pytest.approx(0.001, abs=1e-6)
    tau_sd, tau_ad = gate.predicted_taus()
    assert math.isfinite(tau_sd) and math.isfinite(tau_ad)
