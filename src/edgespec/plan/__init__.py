"""Analytical planning for SD serving over a wireless edge network: scenarios, latency model, bandwidth allocation and the batching/γ planner (paper 2510.11331)."""
