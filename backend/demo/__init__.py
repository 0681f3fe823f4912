"""The demo: local stand-in servers for the connectors (``servers.py``), the sample jobs that ``curatore dev``
offers on a first start (``samples.py``) and the bundled sample files (``files/``). Nothing in the product
imports it but the dev command and the jobs page's "Start sample jobs"."""
