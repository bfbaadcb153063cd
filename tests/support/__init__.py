"""Test support: builders, live services and readers shared by the tests (and the benchmarks), never by the product.

pytest puts `tests/` on the path (`pythonpath` in pyproject.toml), so tests write `from support.ports import free_port`;
benchmarks run from the repository root and write `from tests.support.ports import free_port`. Modules here import
each other relatively, so both names work.
"""
