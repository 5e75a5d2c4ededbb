"""vaultq examples: ``vaultq worker examples.jobs`` with ``python -m examples.produce``,
and ``python -m examples.quickstart`` (the same as ``vaultq demo``)."""
