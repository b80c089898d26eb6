"""Streamlit widgets shared by the pages: timestep, DDIM steps, score and noise draws, whose values hold across pages.

This is not a page: app.py routes only to the pages it lists (st.navigation).
"""

from __future__ import annotations

import streamlit as st

from dlsr_core import explorer
from dlsr_core.diffusion import OFFICIAL_MIN_TIMESTEP
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector

# The timestep, steps, score and draws chosen on one page hold on every page. Streamlit drops a widget's value when a
# page without that widget is shown; the old fix, re-assigning st.session_state[key] at the top of app.py, never runs
# under AppTest after a page switch (it re-runs only the page script), and there the next page's widget came back with
# its first option (MSE) whatever was chosen (persist_state="session" did not help either, Streamlit 1.67). So each
# value is kept under a plain key, written by the widget's on_change, and assigned to the widget's key by the page
# itself just before the widget renders (_restore), which works in both.
KEPT_PREFIX = "_kept_"
MAX_TIMESTEP = 50
# DDIM steps offered in the app: one per timestep up to t = 10 covers the paper's range (t = 3-10), and re-scoring the
# 2,000 ID reference images stays near 3 s at 10 steps on one CPU thread (the CLI takes any number).
MAX_STEPS = 10
DRAWS_KEY = "draws"
DRAWS_CHOICES = (1, 2, 4, 8, 16)


def _restore(key: str, default):
    """The value to show in widget `key`: the one kept from the last change (any page), else the current or default."""
    state = st.session_state
    value = state[KEPT_PREFIX + key] if KEPT_PREFIX + key in state else state.get(key, default)
    state[key] = state[KEPT_PREFIX + key] = value  # assigned here, after st.navigation: see KEPT_PREFIX
    return value


def _keep(key: str, value=None) -> None:
    """Remember widget `key`'s value (on_change callback), or `value` when a page clamps it."""
    state = st.session_state
    state[KEPT_PREFIX + key] = state[key] if value is None else value
    if value is not None:
        state[key] = value


def draws_control(container=None) -> int:
    """The sidebar's "noise draws per score" control; every page scores with its value (see current_draws)."""
    container = container or st.sidebar
    if _restore(DRAWS_KEY, DEFAULT_DRAWS) not in DRAWS_CHOICES:
        _keep(DRAWS_KEY, DEFAULT_DRAWS)
    return container.select_slider(
        "Noise draws per score",
        DRAWS_CHOICES,
        key=DRAWS_KEY,
        on_change=_keep,
        args=(DRAWS_KEY,),
        help="Each score is averaged over this many noise draws. One draw gives the same AUROC as sixteen on the "
        "shipped model; more draws steady the verdicts of images near the threshold (flips between seeds there: "
        "8.1 % at 1 draw, 4.2 % at 4, 2.6 % at 16, MFsim). Scoring time grows with the number of draws.",
    )


def current_draws() -> int:
    """Noise draws per score chosen in the sidebar (the default before the sidebar has rendered)."""
    return int(st.session_state.get(DRAWS_KEY, DEFAULT_DRAWS))


def sampling_controls(detector: Detector, container=None, with_score: bool = True) -> tuple[int, int, str]:
    """Timestep, DDIM steps and score widgets shared by the pages (their values hold across pages)."""
    container = container or st
    top = min(MAX_TIMESTEP, detector.info.config.num_timesteps)
    official = detector.scoring.sampler == "official"  # takes no steps setting, and no network step below t = 3
    low = OFFICIAL_MIN_TIMESTEP if official else 1
    # Default: the timestep the checkpoint's preset scores at (paper 5; official 4, where its sampler starts).
    timestep = int(_restore("timestep", detector.scoring.timestep))
    if not low <= timestep <= top:
        _keep("timestep", timestep := min(max(timestep, low), top))
    # Never more steps than the timestep allows: at t = 1 the (disabled) slider shows the 1 step actually used, and
    # that is the value kept afterwards, not a number nobody chose.
    steps = int(_restore("steps", DEFAULT_STEPS))
    if not 1 <= steps <= min(timestep, MAX_STEPS):
        _keep("steps", min(max(steps, 1), timestep, MAX_STEPS))
    columns = container.columns(3 if with_score else 2)
    timestep = columns[0].slider(
        "Sampling timestep t",
        low,
        top,
        key="timestep",
        on_change=_keep,
        args=("timestep",),
        help="Noise level the features are diffused to before reconstruction (paper: 3-10).",
    )
    steps = columns[1].slider(
        "DDIM steps",
        1,
        max(2, min(timestep, MAX_STEPS)),
        key="steps",
        on_change=_keep,
        args=("steps",),
        help=f"DDIM steps from t back to 0, at most t and at most {MAX_STEPS} here (default {DEFAULT_STEPS}: measured "
        "as accurate as one per timestep, and t times cheaper)."
        + (
            " This model scores with the official sampler, which visits every level and ignores it." if official else ""
        ),
        disabled=timestep == 1 or official,
    )
    steps = min(steps, timestep)
    score = score_control(detector, columns[2]) if with_score else "mfsim"
    return timestep, steps, score


def score_control(detector: Detector, container=None) -> str:
    """The score selectbox (its value holds across pages); only scores this checkpoint can compute."""
    container = container or st
    scores = explorer.available_scores(detector)
    if _restore("score", "mfsim") not in scores:
        _keep("score", "mfsim" if "mfsim" in scores else scores[0])
    return container.selectbox(
        "Score",
        scores,
        key="score",
        on_change=_keep,
        args=("score",),
        format_func=lambda s: explorer.SCORE_LABELS[s],
        help="MFsim: per-stage cosine; MSE: squared error; LR: early minus final MSE. Higher = more OOD for all.",
    )
