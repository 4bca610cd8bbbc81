"""Stillroom: the proxy service (HTTP data path, CLI, admin API)."""
