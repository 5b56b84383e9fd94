"""BAGEL Workbench in the browser.

    .venv/bin/streamlit run streamlit_app.py [-- --model PATH_OR_HUB_ID --device cuda]

Pages: Story, World, Sessions. The model is loaded once per process and shared; each
browser session keeps its own branches. All logic lives in workbench.app.
"""

import streamlit as st

from app_pages import common, sessions, sidebar, story, world

PAGES = {"Story": story.page, "World": world.page}

st.set_page_config(page_title="BAGEL Workbench", page_icon="🥯", layout="wide")
opts = common.options()
st.sidebar.title("BAGEL Workbench")
page = st.sidebar.radio("Page", ["Story", "World", "Sessions"], key="page")
model = sidebar.sidebar_model(opts, page)
if model is None:
    st.stop()
params = sidebar.sidebar_knobs(model.pipe.config.vae_max_side)
common.finish_job()
common.workspace_id()  # this tab's address (a duplicated tab gets its own)
common.show_notice()
job_line = common.job_panel()
common.restore_offer(model)
if page == "Sessions":
    sessions.page(model, opts)
else:
    PAGES[page](model, params)
common.follow_job(job_line)
