"""Curatore Jobs web UI (Reflex)."""
