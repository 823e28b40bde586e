"""Unistock benchmark harness (``python -m bench``). See ``bench/harness.py``."""
