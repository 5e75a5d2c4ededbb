"""Helpers the tests share, one module per job (apps and workers, broker kinds,
installable test packages)."""
