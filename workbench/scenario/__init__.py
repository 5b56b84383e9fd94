"""Scenario files: reading and checking one (read), running it (run), and the positions
its steps will take in the context (positions)."""

from workbench.scenario.read import load_scenario
from workbench.scenario.run import run_scenario

__all__ = ["load_scenario", "run_scenario"]
