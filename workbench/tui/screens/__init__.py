"""Screens of the TUI; bench.py and profile.py are pushed lazily by the main screen."""
