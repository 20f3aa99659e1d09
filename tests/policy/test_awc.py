"""AWC (adaptive window control) and the goodput policy: directions of their choices, None fields, the weights file, and a small simulation."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from edgespec.policy.awc import (
    FEATURE_NAMES,
    WEIGHTS_FORMAT,
    AwcGamma,
    AwcModel,
    AwcWeightsError,
    default_awc_model,
    load_awc_weights,
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
