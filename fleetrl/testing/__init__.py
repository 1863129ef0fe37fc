"""Test doubles and helpers that tests and benchmarks import (kept in the package, per DESIGN §4)."""
