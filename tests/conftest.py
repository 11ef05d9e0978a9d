"""Test-wide settings. Runs before any test module imports torch."""

import os

# OpenMP busy-waiting makes 2-thread CPU matmuls ~10x slower when the cores are shared (CI
# machines, parallel jobs); passive waiting keeps test times stable. See groupo/cli.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
