"""herdgate's tunnel. Its request-path modules may run compiled: see config.native."""

from __future__ import annotations

from config import native

native.use_build(__name__, __path__)
