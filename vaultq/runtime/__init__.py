"""The worker runtime: one job's fate (execute), the worker's lifecycle (worker), leases,
process isolation and health. Import from the submodules."""

__all__: list[str] = []
