"""AWC (adaptive window control) and the goodput policy: directions of their choices, the drafter node's pool, None fields, the weights file, and small simulations."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from edgespec.policy.awc import (
    FEATURE_NAMES,
    WEIGHTS_FORMAT,
    AwcFeatures,
    AwcGamma,
    AwcModel,
    AwcNodeStats,
    AwcSnapshot,
    AwcWeightsError,
    default_awc_model,
    load_awc_weights,
    ready_shift_s,
)
from edgespec.policy.gamma import GAMMA_POLICIES, GoodputGamma, RoundObservation, make_gamma_policy
from edgespec.sim.config import DrafterGroup, RequestClass, SimConfig, Speculation, VerifierConfig, Workload
from edgespec.sim.costs import ConstantCost
from edgespec.sim.links import LinkModel
from edgespec.sim.metrics import summarize
from edgespec.sim.run import simulate

# a session in a steady state: drafts of 4, per-token draft 2 ms, verify 15 ms, RTT 30 ms, upload 5 ms, empty queue
BASE = dict(alpha=0.7, draft_per_token_s=0.002, verify_s=0.015, rtt_s=0.030, upload_s=0.005, queue=0)


def settle(policy, rounds: int = 40, **kw) -> int:
    """Feed `rounds` identical-in-expectation rounds (acceptance as a deterministic α-pattern) and return the final γ."""
    p = dict(BASE, **kw)
    credit = 0.0
    for i in range(rounds):
        g = policy.gamma(float(i))
        # accepted prefix whose long-run mean matches i.i.d. α: accept while the running credit allows
        accepted = 0
        for _ in range(g):
            credit += p["alpha"]
            if credit >= 1.0:
                credit -= 1.0
                accepted += 1
            else:
                break
        policy.observe(RoundObservation(g, accepted, float(i), p["draft_per_token_s"] * g if g else None, p["upload_s"],
                                        p["verify_s"], p["rtt_s"], p["queue"]))
    return policy.gamma(float(rounds))


def fallback() -> AwcGamma:
    return AwcGamma(max_gamma=16, model=None)


def shipped() -> AwcGamma:
    return AwcGamma(max_gamma=16, model=default_awc_model())


POLICIES = [fallback, shipped]


@pytest.mark.parametrize("make", POLICIES, ids=["fallback", "learned"])
def test_longer_rtt_means_longer_gamma(make):
    """A round trip is paid once per round: the longer it is, the more tokens a round should carry."""
    near, far = settle(make(), rtt_s=0.020), settle(make(), rtt_s=0.200)
    assert far > near


@pytest.mark.parametrize("make", POLICIES, ids=["fallback", "learned"])
def test_slower_verifier_means_longer_gamma(make):
    """A slower verify pass is another fixed cost per round (the RTT includes it)."""
    fast = settle(make(), verify_s=0.010, rtt_s=0.020)
    slow = settle(make(), verify_s=0.100, rtt_s=0.110)
    assert slow > fast


@pytest.mark.parametrize("make", POLICIES, ids=["fallback", "learned"])
def test_lower_acceptance_means_shorter_gamma(make):
    assert settle(make(), alpha=0.4) < settle(make(), alpha=0.9)


@pytest.mark.parametrize("make", POLICIES, ids=["fallback", "learned"])
def test_slower_device_means_shorter_gamma(make):
    assert settle(make(), draft_per_token_s=0.020) < settle(make(), draft_per_token_s=0.001)


def test_more_queueing_at_the_same_rtt_means_shorter_gamma_in_the_fallback():
    """The queue depth is the batch-size proxy: a deep queue means big batches whose verify pass grows with every
    drafted token, so at an unchanged round trip the fallback drafts less. (Queueing that shows up as a longer RTT
    pushes the other way: the RTT test above.)"""
    assert settle(fallback(), queue=100) < settle(fallback(), queue=0)


def test_rising_queue_shortens_gamma_before_the_depth_does():
    policy, flat = fallback(), fallback()
    settle(flat, queue=4)
    settle(policy, queue=4)
    for q in (6, 10, 16, 24, 34):  # the queue climbs round after round
        policy.observe(RoundObservation(4, 3, 0.0, 0.008, 0.005, 0.015, 0.030, q))
        flat.observe(RoundObservation(4, 3, 0.0, 0.008, 0.005, 0.015, 0.030, 4))
    assert policy.features.queue_trend > 0
    assert policy.gamma() <= flat.gamma()


@pytest.mark.parametrize("make", POLICIES, ids=["fallback", "learned"])
def test_none_fields_are_handled(make):
    p = make()
    assert p.gamma() == 4  # before any verdict: the initial γ
    for i in range(10):
        g = p.gamma()
        p.observe(RoundObservation(g, g // 2, float(i)))  # counts only: the real node may know no times at all
        assert 1 <= p.gamma() <= p.max_gamma
    p.observe(RoundObservation(0, 0, 11.0, None, None, 0.02, None, None))  # an AD round with only a verify time
    p.observe(RoundObservation(3, 1, 12.0, 0.006, None, None, 0.05, None))
    p.observe(RoundObservation(3, 3, 13.0, float("nan"), float("inf"), -1.0, None, 2))  # garbage times are skipped
    assert isinstance(p.gamma(), int) and 1 <= p.gamma() <= p.max_gamma
    assert not p.used_model or p.features.snapshot().complete


def test_decision_is_the_argmin_of_predicted_time_and_deterministic():
    a, b = shipped(), shipped()
    ga, gb = settle(a, alpha=0.8, rtt_s=0.08), settle(b, alpha=0.8, rtt_s=0.08)
    assert ga == gb  # no clock, no randomness
    snap = a.features.snapshot()
    taus = {g: a.predicted_tau(snap, g) for g in range(1, a.max_gamma + 1)}
    assert ga == min(taus, key=lambda g: (taus[g], g))


def test_bounds_are_respected():
    p = AwcGamma(max_gamma=3, min_gamma=2, model=None)
    assert 2 <= settle(p, alpha=0.95, rtt_s=1.0) <= 3
    assert settle(AwcGamma(max_gamma=3, min_gamma=2, model=None), alpha=0.05, rtt_s=0.001) == 2
    with pytest.raises(ValueError):
        AwcGamma(max_gamma=2, min_gamma=0)


# ----------------------------------------------------------------------------- round time: pass-mates and the verifier's batches


def _snap(recent, busy=1.0, verify_s=0.015, t_tok=0.002):
    return AwcSnapshot(rounds=10, alpha=0.7, gamma_obs=4.0, draft_per_token_s=t_tok, verify_s=verify_s, rtt_s=0.04,
                       upload_s=0.005, queue=2.0, queue_trend=0.0, recent=tuple(recent), busy_share=busy)


def test_drafting_within_the_wait_for_the_batch_is_free_and_a_missed_batch_costs_a_verify_pass():
    """Rounds that waited 5 ms for their batch (verify pass T = 15 ms) with drafts of 4 × 2 ms and a busy verifier."""
    snap = _snap([(0.008, 4, 0.005)] * 4)
    assert ready_shift_s(snap, 6, 0.002, 0.015) == pytest.approx(0.0)  # 4 ms more, within the 5 ms wait
    assert ready_shift_s(snap, 7, 0.002, 0.015) == pytest.approx(0.015)  # 6 ms more: the batch starts without it
    assert ready_shift_s(snap, 2, 0.002, 0.015) == pytest.approx(0.0)  # 4 ms sooner still waits for the same start
    barely = _snap([(0.008, 4, 0.0)] * 4)  # it made its batch just in time: any longer draft misses it
    assert ready_shift_s(barely, 5, 0.002, 0.015) == pytest.approx(0.015)
    long_wait = _snap([(0.008, 4, 0.012)] * 4)  # waited 12 ms: 4 ms sooner would have made the batch it waited behind
    assert ready_shift_s(long_wait, 2, 0.002, 0.015) == pytest.approx(-0.015)
    idle = _snap([(0.008, 4, 0.0)] * 4, busy=0.0)  # an idle verifier starts on a block when it arrives
    assert ready_shift_s(idle, 7, 0.002, 0.015) == pytest.approx(0.006)


def test_drafting_up_to_a_longer_pass_mate_is_free():
    """The node's batched pass ran 20 ms (a pass-mate drafted 10) while this session drafted 4 tokens of 2 ms."""
    snap = _snap([(0.020, 4, 0.0)] * 4, busy=0.0)
    assert ready_shift_s(snap, 10, 0.002, 0.015) == pytest.approx(0.0)
    assert ready_shift_s(snap, 12, 0.002, 0.015) == pytest.approx(0.004)
    assert ready_shift_s(snap, 2, 0.002, 0.015) == pytest.approx(0.0)  # drafting less does not shorten the pass


def _feed(policy, rounds: int, *, alpha: float, batch_at_s: float = 0.0, queue: int = 0, verify_s: float = 0.015,
          t_tok: float = 0.002, upload_s: float = 0.005, down_s: float = 0.005, now0: float = 0.0, gammas=None,
          round_s: float = 0.05) -> int:
    """Rounds with an α-pattern of acceptance; RTT = upload + wait for the batch + verify + downlink.

    With `batch_at_s` the verifier starts batches every verify pass, one of them `batch_at_s` after
    the draft pass starts (less the upload): a block waits for the next start after it arrives.
    `gammas` (a function of the round) overrides the policy's γ, as another session of the node would.
    Round i ends at now0 + i·round_s.
    """
    credit = getattr(policy, "_test_credit", 0.0)  # the acceptance pattern goes on across calls
    for i in range(rounds):
        g = policy.gamma(now0 + i * round_s) if gammas is None else gammas(i)
        accepted = 0
        for _ in range(g):
            credit += alpha
            if credit >= 1.0:
                credit -= 1.0
                accepted += 1
            else:
                break
        wait = (batch_at_s - t_tok * g) % verify_s if batch_at_s else 0.0
        rtt = upload_s + wait + verify_s + down_s
        policy.observe(RoundObservation(g, accepted, now0 + i * round_s, t_tok * g, upload_s, verify_s, rtt, queue))
    policy._test_credit = credit
    return policy.gamma(now0 + rounds * round_s)


def test_a_session_drafts_while_its_block_would_wait_for_the_batch_but_not_past_it():
    """Batches start 12 ms after the draft pass does (and every 15 ms): up to 6 drafts of 2 ms are free, a 7th misses the batch."""
    waits = _feed(AwcGamma(max_gamma=16, model=None, node=AwcNodeStats()), 40, alpha=0.7, batch_at_s=0.012, queue=3)
    idle = _feed(AwcGamma(max_gamma=16, model=None, node=AwcNodeStats()), 40, alpha=0.7)  # an idle verifier
    assert idle < waits <= 6


def test_node_pools_acceptance_per_request_class_as_a_new_sessions_prior():
    state: dict = {}
    first = make_gamma_policy("awc_analytic", 4, 12, node_state=state, request_class="code")
    _feed(first, 60, alpha=0.9)
    assert make_gamma_policy("awc_analytic", 4, 12, node_state=state).features.node is first.features.node
    newcomer = make_gamma_policy("awc_analytic", 4, 12, node_state=state, request_class="code")
    other = make_gamma_policy("awc_analytic", 4, 12, node_state=state, request_class="chat")
    alone = make_gamma_policy("awc_analytic", 4, 12)
    assert newcomer.features.alpha > 0.8  # the pool's α̂ before its first verdict
    assert other.features.alpha == pytest.approx(alone.features.alpha)  # no chat sessions yet: the default prior
    assert alone.features.node is None


def test_sessions_of_one_node_draft_one_gamma_between_their_own_choices():
    solo_hi = _feed(AwcGamma(max_gamma=16, model=None, node=AwcNodeStats()), 40, alpha=0.92)
    solo_lo = _feed(AwcGamma(max_gamma=16, model=None, node=AwcNodeStats()), 40, alpha=0.4)
    assert solo_hi > solo_lo
    node = AwcNodeStats()
    hi, lo = AwcGamma(max_gamma=16, model=None, node=node), AwcGamma(max_gamma=16, model=None, node=node)
    for i in range(40):  # interleaved rounds, as the node's passes serve both
        _feed(hi, 1, alpha=0.92, now0=0.05 * i)
        _feed(lo, 1, alpha=0.4, now0=0.05 * i)
    g_hi, g_lo = hi.gamma(2.0), lo.gamma(2.0)
    assert g_hi == g_lo and solo_lo <= g_hi <= solo_hi
    apart = AwcGamma(max_gamma=16, model=None, node=node, joint=False, request_class="other")  # pooling without the joint γ
    assert _feed(apart, 40, alpha=0.92, now0=100.0) == solo_hi


def test_a_lapsed_sessions_vote_no_longer_counts():
    node = AwcNodeStats()
    gone = AwcGamma(max_gamma=16, model=None, node=node, request_class="a")
    stays = AwcGamma(max_gamma=16, model=None, node=node, request_class="b")  # (another class: its own acceptance pool)
    _feed(gone, 20, alpha=0.4)
    solo = _feed(AwcGamma(max_gamma=16, model=None, node=AwcNodeStats()), 40, alpha=0.92, now0=1000.0)
    assert _feed(stays, 40, alpha=0.92, now0=1000.0) == solo  # 1000 s later the first session's rounds are long over


def test_a_node_whose_verify_pass_does_not_grow_with_gamma_ignores_the_queue():
    """The queue proxy shortens γ (the fallback test above); a node that has seen its verify time flat across γ does not."""
    node = AwcNodeStats()
    _feed(AwcGamma(max_gamma=16, model=None, node=node, joint=False), 60, alpha=0.7, queue=100, gammas=lambda i: 2 + i % 7)
    assert node.verify_slope()[0] == pytest.approx(0.0) and node.verify_slope()[1] > 0.5
    on_node = _feed(AwcGamma(max_gamma=16, model=None, node=node, joint=False), 40, alpha=0.7, queue=100)
    proxy = _feed(AwcGamma(max_gamma=16, model=None), 40, alpha=0.7, queue=100)
    assert on_node > proxy
    grows = AwcNodeStats()  # a node whose verify pass grows 1 ms per drafted token (its drafts are the longest in their batches)
    tracker = AwcFeatures(node=grows)
    for i in range(60):
        g = 2 + i % 7
        tracker.update(RoundObservation(g, 1, float(i), 0.002 * g, 0.005, 0.010 + 0.001 * g, 0.030 + 0.001 * g, 100))
    assert grows.verify_slope()[0] == pytest.approx(0.001)
    assert _feed(AwcGamma(max_gamma=16, model=None, node=grows, joint=False), 40, alpha=0.7, queue=100) < on_node


# ----------------------------------------------------------------------------- the weights file


def test_shipped_weights_load_validate_and_are_package_data():
    ref = resources.files("edgespec.policy").joinpath("awc_weights.json")
    assert ref.is_file()
    data = json.loads(ref.read_text(encoding="utf-8"))
    assert data["format"] == WEIGHTS_FORMAT and data["features"] == list(FEATURE_NAMES)
    meta = data["metadata"]
    for key in ("objective", "grid", "fit", "seed"):
        assert key in meta
    model = default_awc_model()
    assert len(model.coef) == len(FEATURE_NAMES) and model.gamma_scale > 0


def _good() -> dict:
    return AwcModel(tuple((0.0, 0.1, 0.2) for _ in FEATURE_NAMES), 8.0, {}).to_json({"seed": 0})


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="other/2"), "format"),
    (lambda d: d.update(features=["bias"]), "features"),
    (lambda d: d.update(coef=d["coef"][:-1]), "coef"),
    (lambda d: d["coef"][0].__setitem__(1, "x"), "finite"),
    (lambda d: d.update(gamma_scale=0), "gamma_scale"),
    (lambda d: d.update(metadata=[]), "metadata"),
])
def test_malformed_weights_give_a_clear_error(tmp_path, mutate, message):
    data = _good()
    mutate(data)
    path = tmp_path / "w.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AwcWeightsError, match=message) as info:
        load_awc_weights(path)
    assert str(path) in str(info.value)


def test_weights_file_errors_name_the_file(tmp_path):
    path = tmp_path / "w.json"
    path.write_text("{not json")
    with pytest.raises(AwcWeightsError, match="not JSON"):
        load_awc_weights(path)
    with pytest.raises(AwcWeightsError, match="cannot read"):
        load_awc_weights(tmp_path / "missing.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_good()))
    assert load_awc_weights(good).coef[0] == (0.0, 0.1, 0.2)
    with pytest.raises(ValueError):  # AwcWeightsError is a ValueError
        AwcModel.from_json([], "x")


# ----------------------------------------------------------------------------- registration and goodput


def test_registered_by_name():
    for name in ("awc", "awc_analytic", "goodput"):
        assert name in GAMMA_POLICIES
        assert 1 <= make_gamma_policy(name, 4, 8).gamma() <= 8
    assert make_gamma_policy("awc", 4, 8).model is not None
    assert make_gamma_policy("awc_analytic", 4, 8).model is None


def _goodput_settle(queue: int, slope_s: float, rounds: int = 60) -> int:
    """Verify time = 10 ms + slope·(queue+1)·(γ+1): the batch-time model SmartSpec assumes."""
    p = GoodputGamma(max_gamma=16)
    for i in range(rounds):
        g = p.gamma()
        q = queue + (i % 3)  # some spread so the slope is identifiable
        v = 0.010 + slope_s * (q + 1) * (g + 1)
        p.observe(RoundObservation(g, min(g, 3), float(i), 0.001 * g, 0.001, v, v + 0.01, q))
    return p.gamma()


def test_goodput_shortens_gamma_when_batches_are_compute_bound():
    flat = _goodput_settle(queue=8, slope_s=0.0)
    steep = _goodput_settle(queue=8, slope_s=0.0005)
    assert steep < flat
    assert _goodput_settle(queue=30, slope_s=0.0005) <= steep


def test_goodput_handles_none_fields():
    p = GoodputGamma(max_gamma=8)
    p.observe(RoundObservation(4, 2))
    assert p.gamma() == 4  # no verify time yet
    p.observe(RoundObservation(4, 2, 1.0, None, None, 0.02, None, None))
    assert 1 <= p.gamma() <= 8


# ----------------------------------------------------------------------------- in the simulator


def _mean_latency(policy: str, gamma: int, *, alpha: float, latency_s: float, draft_step_s: float, verify_s: float) -> float:
    """Six drafter nodes, closed loop, 24 requests of 96 tokens, constant costs; the same seed for every policy."""
    link = LinkModel(1e9, latency_s)
    cfg = SimConfig(
        classes=(RequestClass("req", 16, 96),),
        drafters=(DrafterGroup("nodes", 6, link, link, alpha=alpha),),
        draft_cost=ConstantCost(draft_step_s),
        verify_cost=ConstantCost(verify_s),
        verifiers=VerifierConfig(window_s=0.0),
        workload=Workload("closed", 24),
        speculation=Speculation(gamma_policy=policy, gamma=gamma, max_gamma=12),
        seed=3,
    )
    return summarize(simulate(cfg)).e2e_s.mean


def test_awc_beats_poor_static_gammas_in_the_simulator():
    """Far nodes with good drafts want long blocks (static γ=1 is poor); poor drafts on a near link want short ones (γ=12 is poor)."""
    far = dict(alpha=0.9, latency_s=0.05, draft_step_s=0.002, verify_s=0.02)
    assert _mean_latency("awc", 4, **far) < _mean_latency("static", 1, **far)
    near = dict(alpha=0.3, latency_s=0.001, draft_step_s=0.01, verify_s=0.02)
    assert _mean_latency("awc", 4, **near) < _mean_latency("static", 12, **near)


def test_the_simulator_gives_the_sessions_of_one_node_one_pool():
    """As the real drafter node does: AWC sessions on one simulated node share its `AwcNodeStats`, other nodes have their own."""
    link = LinkModel(1e9, 0.005)
    cfg = SimConfig(
        classes=(RequestClass("chat", 16, 48), RequestClass("code", 16, 48)),
        drafters=(DrafterGroup("nodes", 3, link, link, alpha=0.7),),
        draft_cost=ConstantCost(0.002),
        verify_cost=ConstantCost(0.02),
        verifiers=VerifierConfig(window_s=0.0),
        workload=Workload("closed", 18, users_per_node=2),
        speculation=Speculation(gamma_policy="awc", gamma=4, max_gamma=12),
        seed=5,
    )
    run = simulate(cfg)
    pools: dict[int, set[int]] = {}
    for s in run.sessions:
        assert isinstance(s.policy, AwcGamma) and s.policy.features.request_class == cfg.classes[s.klass].name
        pools.setdefault(s.node.index, set()).add(id(s.policy.features.node))
    assert len(pools) == 3 and all(len(v) == 1 for v in pools.values())
    assert len({next(iter(v)) for v in pools.values()}) == 3
