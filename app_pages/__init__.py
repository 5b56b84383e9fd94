"""Streamlit pages of the browser app (widgets only; the logic is in workbench.app)."""
