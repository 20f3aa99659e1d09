"""Pure-Python decision policies (speculation length, verifier batching, bandwidth) shared by the real nodes and the simulator."""
