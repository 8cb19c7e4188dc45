"""Fixtures of the chaos tests; helpers live beside this file (imported relatively) and in the harness (devkit)."""
