"""Benchmarks for fieldhub; each module with a ``main()`` is run by ``./scripts/bench NAME``.

The package is not installed with fieldhub: run it from the repository root
(``python -m bench.NAME``) so the benchmarks never become part of the shipped wheel.
"""
