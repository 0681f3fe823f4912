"""Job types: the registry (``registry.py``), the single source of truth for every type, and the config
models of the built-in types (``configs.py``). Below the run service: it names policies, never runs."""
