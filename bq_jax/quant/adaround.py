"""Placeholder: filled in by its module."""

__all__: list[str] = []
