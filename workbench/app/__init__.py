"""The browser app's logic, free of Streamlit: model loading, the per-model generation
gate and background jobs with cancellation, branches of a browser session, the chains
the pages start, upload validation, session archives and downloads.

`streamlit_app.py` and `app_pages/` only draw widgets over these.
"""
