"""Stillroom storage: the Store protocol and its backends. Never imports proxy."""
