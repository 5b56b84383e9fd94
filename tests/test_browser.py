"""The app in a real browser: `streamlit run` on 127.0.0.1 driven by headless Chromium.

A world walk with an MP4 download; a story's branches (Regenerate and Fork twice, each
shown), a rejected upload explained, the story page opened on its own, a reload
restoring every branch; Cancel stopping a replay. One workspace across the pages: a tab
that used Story and World restores both after a reload; a World archive saved and
opened from the Sessions page; two browsers at one address after Start fresh never
write the same autosave folder; a reload during a job says what became of it; the
World page's progress and Cancel sit by its buttons. The browser driving is
bench/browser.py's (the app benchmark drives the app with it too).

Needs Debian's chromium and chromium-driver (scripts/browser-deps.sh installs them;
scripts/test.sh runs it). Without them this test fails, it does not skip. The screenshot
of the last state goes to tests/artifacts/ (or $TEST_ARTIFACTS); its path is printed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import imageio.v3 as iio
import pytest

from bench.browser import (
    STARTUP_SECONDS,
    STEP_SECONDS,
    AppServer,
    BrowserMissing,
    Page,
    app_env,
    button,
    chromium,
    exact_button,
    sidebar,
)
from workbench import chains, store
from workbench.params import GenerationParams
from workbench.session import Session

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
# the suite's per-test limit (pyproject.toml), raised above this module's own waits: the
# server's start and a few slow steps, each of which fails the test with its own message
pytestmark = pytest.mark.timeout(STARTUP_SECONDS + 2 * STEP_SECONDS + 180)


@pytest.fixture
def app_url(tmp_path):
    """`streamlit run streamlit_app.py` on a free 127.0.0.1 port, on the defaults a user
    gets (the tiny default; the shipped world model on the World page)."""
    log = tmp_path / "streamlit.log"
    try:
        with AppServer(app_env(tmp_path / "sessions"), log) as url:
            yield url
    except RuntimeError as err:
        pytest.fail(str(err))
    finally:
        if log.exists():
            print(f"streamlit's log:\n{log.read_text(errors='replace')[-6000:]}")  # on failure


def _chromium(downloads: Path | None = None):
    try:
        return chromium(downloads)
    except BrowserMissing as err:
        pytest.fail(str(err))  # the browser test fails without a browser, it never skips


@pytest.fixture
def browser(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _chromium(downloads)
    try:
        yield driver
    finally:
        driver.quit()


def test_world_forward_twice_undo_export_mp4(app_url, browser):
    page = Page(browser)
    browser.get(app_url)
    try:
        page.click(sidebar("World"))
        # with no model chosen the World page runs the shipped world model, and says so
        page.wait_for_text("trained on the rendered world")
        page.click(button("Start from this view"))  # the rendered world's view of seed 0
        page.wait_for_caption("1 frame")
        for frames in ("2 frames", "3 frames"):
            page.click(button("Forward"))
            page.wait_for_caption(frames)
        page.click(button("Undo last frame"))
        page.wait_for_caption("2 frames")
        page.click(button("Prepare downloads"))
        page.click("//*[@data-testid='stDownloadButton']//button[normalize-space(.)='MP4']")
        video = page.wait_for_download("world-1-frames.mp4")
        assert video.read_bytes()[4:8] == b"ftyp"
        assert len(iio.imread(video, plugin="FFMPEG")) == 2  # start + one forward
        assert not page.has_exception()
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "browser_world.png"
        browser.set_window_size(1400, 2000)  # the whole page: controls, timeline, downloads
        browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")


# -- the work-keeping flows: branches in view, reload restores, downloads, cancel --

BRANCH_PICKER = "//*[@data-testid='stSelectbox'][.//label[normalize-space(.)='Branch']]"


def _strip_sources(page: Page) -> list[str]:
    """The strip's image addresses (Streamlit names media by content: equal images,
    equal addresses)."""
    xpath = (  # the strip only, not the Compare section below it
        "//*[@data-testid='stImage'][not(preceding::*[normalize-space(text())="
        "'Compare branches'])]//img"
    )
    return [img.get_attribute("src").split("/")[-1] for img in page.find(xpath)]


def _choose(page: Page, picker: str, option: str) -> None:
    page.click(f"{picker}//input")
    page.click(f"//*[@role='option'][normalize-space(.)='{option}']")
    page.wait_for_text(f"Strip of {option}")


def _add_beat(page: Page, text: str) -> None:
    page.type_area("Beat text", text)
    page.click(button("Add beat"))


def test_story_branches_reload_restore_and_the_story_page(app_url, browser, tmp_path):
    page = Page(browser)
    browser.get(app_url)
    page.type_into("Denoising steps", "2")
    # a rejected reference: its reason in the form, the beat not added, the text kept
    _add_beat(page, "a fox finds a lantern")
    page.wait_for_markdown("a fox finds a lantern")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.upload("Reference image", notes)
    _add_beat(page, "the fox sleeps")
    page.wait_for_text("Not added: the reference image notes.txt")
    assert page.value_of("//textarea[@aria-label='Beat text']") == "the fox sleeps"
    assert not page.has_markdown("the fox sleeps")
    page.click("//*[@data-testid='stFileChipDeleteBtn']/descendant-or-self::button")
    page.click(button("Add beat"))
    page.wait_for_markdown("the fox sleeps")
    page.click(button("Generate 2 beats"))
    page.wait_for_caption("2 frames")
    # Regenerate twice and Fork twice: every new branch is the one shown, with a notice
    for new in ("story-2", "story-3"):
        page.click(button("Regenerate"))
        page.wait_for_text(f"made the branch {new}, now shown")
        page.wait_for_text(f"Strip of {new}")
    for new in ("story-4", "story-5"):
        page.click(button("Fork this story"))
        page.wait_for_text(f"as {new}, now shown")
        page.wait_for_text(f"Strip of {new}")
    frames = {}
    for name in ("story-1", "story-2", "story-3", "story-4", "story-5"):
        _choose(page, BRANCH_PICKER, name)
        frames[name] = _strip_sources(page)
        assert len(frames[name]) == 2
    assert frames["story-1"][1] != frames["story-2"][1] != frames["story-3"][1]
    # the story page download opens on its own with every image
    page.click(button("Prepare downloads"))
    page.click("//*[@data-testid='stDownloadButton']//button[normalize-space(.)='Story page']")
    story = page.wait_for_download("story-5-story.html")
    address = browser.current_url  # with this tab's ?ws=
    assert "ws=" in address
    browser.get(story.as_uri())
    images = browser.execute_script(
        "return [...document.images].map(i => i.complete && i.naturalWidth > 0)"
    )
    assert images == [True, True]
    # a reload (the same address) restores every branch with the same frames
    browser.get(app_url)  # a new tab (no ?ws=) is offered the recent work
    page.wait_for_text("Autosaved from a recent visit")
    browser.get(address)  # a reload of the first tab
    page.wait_for_text("Autosaved from this address")
    page.click(button("Restore"))
    page.wait_for_text("Restored 5 branches")
    for name, sources in frames.items():
        _choose(page, BRANCH_PICKER, name)
        assert _strip_sources(page) == sources, name
    assert not page.has_exception()
    # the same address in a second tab while the first is open: its own workspace
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(address)
    page.wait_for_text("This address is open in another tab")
    assert _ws(browser.current_url) not in ("", _ws(address))
    browser.close()
    browser.switch_to.window(first)


def _ws(url: str) -> str:
    return parse_qs(urlparse(url).query).get("ws", [""])[0]


@pytest.fixture(scope="module")
def slow_story_saved(tmp_path_factory):
    """A saved story slow enough to cancel, or to reload the page during, while it
    replays: 6 frames of 1000 steps at 128 px, about 15 s on two idle cores (3 frames of
    120 steps replayed in about 1 s there: over before a click or a reload landed)."""
    from workbench.app.model import load_model

    session = Session(load_model("").pipe)  # the app's tiny default, made if needed
    params = GenerationParams(num_timesteps=1000, height=128, width=128)
    chains.story(session, ["one", "two", "three", "four", "five", "six"], params)
    return store.save(session, tmp_path_factory.mktemp("stories") / "slow")


@pytest.fixture
def slow_story(slow_story_saved, tmp_path):
    """The slow story, copied into this test's sessions folder."""
    return Path(shutil.copytree(slow_story_saved, tmp_path / "sessions" / "slow"))


def test_cancel_stops_a_replay(slow_story, app_url, browser):
    page = Page(browser)
    browser.get(app_url)
    page.click(sidebar("Sessions"))
    page.click(button("Replay"))
    page.wait_for_text("replaying slow: regenerating and comparing: turn")
    page.click(button("Cancel"))
    page.wait_for_text("Cancelled replaying slow")
    assert not (slow_story / "replay_report.json").exists()
    assert not page.has_exception()


# -- one workspace across Story and World; one tab per address; jobs and reloads --


def test_story_and_world_restore_after_a_reload(app_url, browser):
    """Story on the tiny default, World on the world model: a reload returns to the
    World page and its Restore brings back both, each on its own model."""
    page = Page(browser)
    browser.get(app_url)
    page.type_into("Denoising steps", "2")
    # the reference uploader states its own limit, the one its label's check applies
    assert page.has_text("20MB per file") and not page.has_text("200MB")
    _add_beat(page, "a fox finds a lantern")
    page.click(button("Generate 1 beat"))
    page.wait_for_caption("1 frame")
    page.click(sidebar("World"))
    page.click(button("Start from this view"))
    page.wait_for_caption("1 frame")
    page.click(button("Forward"))
    page.wait_for_caption("2 frames")
    browser.get(browser.current_url)  # a reload
    page.wait_for_text("Autosaved from this address: 1 story (story-1: 1 frame) and 1 world")
    assert page.has_text("The world model samples with its own settings")  # still World
    page.click(button("Restore"))
    page.wait_for_text("Restored 2 branches, on the Story page and the World page")
    page.wait_for_caption("2 frames")
    page.click(sidebar("Story"))
    page.wait_for_text("Strip of story-1")
    page.wait_for_caption("1 frame")
    assert not page.has_exception() and not page.has_text("saved with checkpoint")


def test_a_world_saved_and_opened_from_the_sessions_page(app_url, browser):
    page = Page(browser)
    browser.get(app_url)
    page.click(sidebar("World"))
    page.click(button("Start from this view"))
    page.wait_for_caption("1 frame")
    page.click(button("Forward"))
    page.wait_for_caption("2 frames")
    page.click(button("Prepare downloads"))
    page.click("//*[@data-testid='stDownloadButton']//button[normalize-space(.)='Session archive']")
    archive = page.wait_for_download("world-1-session.zip")
    page.click(sidebar("Sessions"))
    page.click(exact_button("Save"))
    page.wait_for_text("Saved world-1 in")
    page.upload("Session archive", archive)
    page.click(exact_button("Open"))
    page.wait_for_text("Opened world-1-session as world-2 on the World page")
    page.click(sidebar("World"))
    page.wait_for_text("Timeline of world-2")
    page.click(button("Forward"))  # it carries on, on the world model
    page.wait_for_caption("3 frames")
    assert not page.has_exception() and not page.has_text("saved with checkpoint")


def test_two_tabs_after_start_fresh_never_write_the_same_autosave(app_url, browser, tmp_path):
    sessions = tmp_path / "sessions" / "autosave"
    page = Page(browser)
    browser.get(app_url)
    page.type_into("Denoising steps", "2")
    _add_beat(page, "one")
    page.click(button("Generate 1 beat"))
    page.wait_for_caption("1 frame")
    first = _ws(browser.current_url)
    browser.get(browser.current_url)  # a reload, then Start fresh: a new address
    page.click(button("Start fresh"))
    page.wait.until(lambda d: _ws(d.current_url) not in ("", first), "no new address")
    fresh = browser.current_url
    page.type_into("Denoising steps", "2")
    for text in ("two", "three"):
        _add_beat(page, text)
        page.wait_for_markdown(text)
    page.click(button("Generate 2 beats"))
    page.wait_for_caption("2 frames")
    second = _chromium()  # another browser, at the first tab's new address
    try:
        other = Page(second)
        second.get(fresh)
        other.wait_for_text("This address is open in another tab")
        mine = _ws(second.current_url)
        assert mine not in ("", _ws(fresh))
        other.type_into("Denoising steps", "2")
        _add_beat(other, "four")
        other.click(button("Generate 1 beat"))
        other.wait_for_caption("1 frame")
        page.click(button("Undo last beat"))  # the first tab's change after the second's
        page.wait_for_caption("1 frame")
        other.wait_for_caption("1 frame")
    finally:
        second.quit()
    a, b = (sessions / _ws(fresh) / "story-1", sessions / mine / "story-1")
    a_text, b_text = (f.joinpath("session.json").read_text() for f in (a, b))
    assert '"two"' in a_text and '"three"' not in a_text and '"four"' not in a_text
    assert '"four"' in b_text and '"two"' not in b_text
    claims = [json.loads((f.parent / "claim.json").read_text())["tab"] for f in (a, b)]
    assert claims[0] != claims[1]


def test_a_reload_during_a_job_says_what_became_of_it(slow_story, app_url, browser):
    page = Page(browser)
    browser.get(app_url)
    page.click(sidebar("Sessions"))
    page.click(button("Replay"))
    page.wait_for_text("replaying slow: regenerating and comparing: turn")
    browser.get(browser.current_url)  # a reload
    page.wait_for_text("The page was reloaded while replaying slow was running, so it was stopped")
    assert page.has_text("Regenerates every model turn")  # back on the Sessions page
    assert not page.has_exception()


def test_the_world_pages_progress_and_cancel_are_by_its_buttons(app_url, browser):
    """On the tiny default at 50 steps (the world model's frames are too quick to catch),
    Predict's progress bar and Cancel show right under the Predict button."""
    page = Page(browser)
    browser.get(app_url)
    page.click("//*[@data-testid='stSidebar']//summary[contains(normalize-space(.), 'Model')]")
    page.type_into("Checkpoint folder or hub id", str(REPO / ".cache" / "tiny-bagel"))
    page.click(sidebar("World"))
    page.type_into("Prompt", "a quiet street")
    page.click(button("Start from prompt"))
    page.wait_for_caption("1 frame")
    page.type_into("Frames", "8")
    page.click(exact_button("Predict"))
    page.wait.until(lambda d: page.find(PROGRESS), "no progress bar")
    bar = page.find(PROGRESS)[0].location["y"]
    predict = page.find(exact_button("Predict"))[0].location["y"]
    cancel = page.find(exact_button("Cancel"))[0].location["y"]
    assert 0 < bar - predict < 300 and 0 < cancel - bar < 150  # right under Predict
    page.click(exact_button("Cancel"))
    page.wait_for_text("Cancelled predict 8 frames")
    page.wait_for_caption("1 frame")


PROGRESS = "//*[@data-testid='stProgress']"
