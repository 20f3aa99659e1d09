"""The deployment simulator: an event kernel, links, simulated drafter and verifier nodes running the real policies, workloads and metrics."""
