"""The distributed demo behind `edgespec demo`: real verifier and drafter node processes on loopback (`nodes`), a workload and live figures (`run`)."""
