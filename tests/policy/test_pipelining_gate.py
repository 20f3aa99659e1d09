"""The pipelining gate: speculative drafting while the device has other work only at a hit rate that pays, with probes."""

import pytest

from edgespec.policy.pipelining import PipelineGate


def test_an_idle_draft_device_always_speculates():
    gate = PipelineGate(min_hit_rate=0.5)
    for _ in range(20):
        gate.observe(False)
    assert gate.hit_rate < 0.05
    assert all(gate.allow(device_busy=False) for _ in range(10))


def test_a_busy_device_stops_speculating_for_a_session_that_misses_and_probes_it():
    gate = PipelineGate(min_hit_rate=0.5, probe_every=4)
    assert gate.allow(device_busy=True)  # the prior lets a new session try
    for _ in range(10):
        gate.observe(False)
    decisions = [gate.allow(device_busy=True) for _ in range(10)]
    assert decisions == [False, False, False, False, True, False, False, False, False, True]
    assert gate.refusals == 8


def test_a_session_that_hits_keeps_speculating_and_a_recovering_one_comes_back():
    gate = PipelineGate(min_hit_rate=0.5, probe_every=0)
    for _ in range(10):
        gate.observe(True)
    assert all(gate.allow(device_busy=True) for _ in range(5))
    for _ in range(10):
        gate.observe(False)
    assert not gate.allow(device_busy=True)
    for _ in range(10):  # hits seen on an idle device count too
        gate.observe(True)
    assert gate.allow(device_busy=True)


@pytest.mark.parametrize("kwargs", [{"min_hit_rate": 1.5}, {"smoothing": 0.0}, {"probe_every": -1}, {"prior": -0.1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        PipelineGate(**kwargs)
