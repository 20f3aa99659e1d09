"""An emulated edge network on one machine: namespaces, shaped links, a delay relay, CPU quotas, and the real nodes running on it."""
