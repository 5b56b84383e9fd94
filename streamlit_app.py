"""BAGEL Workbench in the browser.

    workbench app [--model PATH_OR_HUB_ID --device cuda]

Pages: Story, World, Sessions. Each model is loaded once per process and shared; each
browser tab keeps its own branches, of both pages and any model. All logic lives in
workbench.app.
"""

import streamlit as st

from app_pages import common, sessions, sidebar, story, tab, world

PAGES = {"Story": story.page, "World": world.page}
NAMES = ["Story", "World", "Sessions"]

st.set_page_config(page_title="BAGEL Workbench", page_icon="🥯", layout="wide")
opts = common.options()
st.sidebar.title("BAGEL Workbench")
if "page" not in st.session_state:  # a reload returns to the page it showed (?page=...)
    asked = st.query_params.get("page", "").title()
    st.session_state["page"] = asked if asked in NAMES else NAMES[0]
page = st.sidebar.radio("Page", NAMES, key="page")
if st.query_params.get("page") != page.lower():
    st.query_params["page"] = page.lower()
model = sidebar.sidebar_model(opts, page)
if model is None:
    st.stop()
params = sidebar.sidebar_knobs(model.pipe.config.vae_max_side)
common.finish_job()
tab.address()  # this tab's address (a duplicated tab gets its own)
common.show_notice()
top = st.container()  # the job's panel, unless the page shows it by its own buttons
tab.restore_offer(model)
if page == "Sessions":
    line = sessions.page(model, opts)
else:
    line = PAGES[page](model, params)
if line is None:
    line = common.job_panel(top)
common.follow_job(line)
