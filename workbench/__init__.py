"""BAGEL Workbench: sessions, chains, scenarios and exports over the `bagel` model."""

__version__ = "0.1.0"
