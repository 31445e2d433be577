"""The management API (Rancher v3 paths and field names)."""

from __future__ import annotations
