"""Shared pytest fixtures and helpers for sparse-attn tests."""

from __future__ import annotations

import os

# Keep tests deterministic and polite on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
