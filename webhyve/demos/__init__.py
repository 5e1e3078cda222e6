"""Demos that run themselves: scenario.py loads and runs the scenarios/*.toml, live on a server or headless."""
