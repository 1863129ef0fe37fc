"""Test doubles and helpers that tests and benchmarks import (kept in the package: actors import some of them, see docs/architecture.md)."""
