"""The explaining pages driven headlessly (AppTest) on the shipped model and the demo sets: the Score page's layer
profiles, duplicates, markers and controls, settings that hold across pages, and the "How DLSR works" page."""

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
import shipped
import torch
from streamlit.testing.v1 import AppTest

from dlsr_core import explorer
from dlsr_core.data import open_dataset

torch.set_num_threads(1)
APP = str(Path(__file__).resolve().parent.parent / "app.py")
SCORE_PAGE, WALK_PAGE = "pages/score_images.py", "pages/how_dlsr_works.py"


def open_page(page: str, **state) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=240)
    for key, value in state.items():
        app.session_state[key] = value
    app.run()
    app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def charts(app: AppTest) -> list[dict]:
    return [json.loads(element.proto.spec) for element in app.get("plotly_chart")]


def values(data) -> np.ndarray:
    """A Plotly array as numbers: plain lists, or the typed {'dtype', 'bdata'} form Plotly uses for NumPy arrays."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
    return np.asarray(data, dtype=np.float64)


def demo_png(spec: str, index: int) -> bytes:
    return explorer.encode_png(open_dataset(spec)[index])


def captions(app: AppTest) -> str:
    return "\n".join(str(c.value) for c in app.caption)


def test_marker_rows_stack_only_markers_that_would_overlap():
    rows = explorer.marker_rows([0.0, 0.5, 0.52, 0.54, 3.0, 0.1], min_gap=0.1)
    assert rows.tolist() == [0, 0, 1, 2, 0, 0]
    assert explorer.marker_rows([], 1.0).tolist() == []


def test_duplicates_score_identically_and_every_image_gets_a_layer_profile(detector):
    app = open_page(SCORE_PAGE)
    shirt, letter = demo_png(shipped.ID_SET, 11), demo_png("demo:letters", 5)
    files = [("shirt.png", shirt, "image/png"), ("copy_of_shirt.png", shirt, "image/png")]
    app.file_uploader[0].set_value([*files, ("letter.png", letter, "image/png")]).run()
    assert not app.exception
    results = {r.name: r for r in app.session_state["score_results"]}
    assert results["shirt.png"].score == results["copy_of_shirt.png"].score
    assert results["shirt.png"].profile.sentence == results["copy_of_shirt.png"].profile.sentence
    assert "Identical files **shirt.png**, **copy_of_shirt.png**: one image, one score" in captions(app)
    profiles = [element.proto.body for element in app.html]
    assert len(profiles) == 3 and all("Layer profile" in body for body in profiles)
    assert results["letter.png"].verdict == "OOD" and results["letter.png"].profile.status.count("worse") >= 1
    assert any(results["letter.png"].profile.sentence in body for body in profiles)

    # Markers, not stacked text: numbered points under the histogram, names only in hover text and the cards.
    figure = charts(app)[0]
    histogram = next(trace for trace in figure["data"] if trace["type"] == "histogram")
    assert len(values(histogram["x"])) == 2000  # every demo ID image, always
    numbers = sorted(text for trace in figure["data"] if trace["type"] == "scatter" for text in trace["text"])
    assert numbers == ["1", "2", "3"]
    assert not any("shirt" in str(a.get("text", "")) for a in figure["layout"].get("annotations", []))

    # The sidebar's noise draws reach the scores: four draws, averaged, like the core (set through the state: see
    # the next test).
    app.session_state["draws"] = 4
    app.run()
    assert not app.exception and "4 noise draw(s)" in app.success[0].value
    again = {r.name: r for r in app.session_state["score_results"]}
    features = explorer.prepare_uploads(_extractor(detector), detector.input_size, [(n, d) for n, d, _ in files])
    expected = detector.score_features(features.features, 5, draws=4).mfsim
    assert again["shirt.png"].score == again["copy_of_shirt.png"].score == pytest.approx(float(expected[0]), abs=1e-7)
    assert again["shirt.png"].score != results["shirt.png"].score


def test_the_sidebar_draws_control_sets_the_draws_every_page_uses():
    app = AppTest.from_file(APP, default_timeout=240)
    app.run()
    control = app.sidebar.select_slider(key="draws")
    assert control.label == "Noise draws per score" and control.options == ["1", "2", "4", "8", "16"]
    assert control.value == 1 and app.session_state["draws"] == 1
    # AppTest re-runs only the page script after the first run, so the sidebar value is set through its state.
    app.switch_page(SCORE_PAGE)
    app.session_state["draws"] = 8
    app.session_state["score_uploads"] = [("letter.png", demo_png("demo:letters", 0))]
    app.run()
    assert "8 noise draw(s)" in app.success[0].value


def _extractor(detector):
    from dlsr_core.backbones import create_feature_extractor

    return create_feature_extractor(detector.backbone, detector.backbone_weights())


def test_the_latest_action_decides_which_images_are_shown():
    app = open_page(SCORE_PAGE)
    app.file_uploader[0].set_value([("mine.png", demo_png("demo:digits", 1), "image/png")]).run()
    assert "Showing your 1 uploaded file(s)" in captions(app) and "Scored 1 image(s)" in app.success[0].value
    next(b for b in app.button if b.label == "Use sample images").click().run()
    assert "Showing 12 sample images" in captions(app) and "Show my uploads" in captions(app)
    assert "Scored 12 image(s)" in app.success[0].value
    next(b for b in app.button if b.label == "Show my uploads").click().run()
    assert "Showing your 1 uploaded file(s)" in captions(app) and "Scored 1 image(s)" in app.success[0].value
    next(b for b in app.button if b.label == "Use sample images").click().run()
    app.file_uploader[0].set_value([("a.png", demo_png("demo:digits", 2), "image/png")] * 2).run()
    assert "Showing your 2 uploaded file(s)" in captions(app), "a new upload wins over the samples"
    assert not app.exception


def test_steps_follow_the_timestep_and_settings_hold_across_pages():
    app = open_page(SCORE_PAGE, score_uploads=[("letter.png", demo_png("demo:letters", 0))])
    app.slider(key="timestep").set_value(50).run()
    assert app.slider(key="steps").max == 10  # capped: 2,000 reference images x 10 steps is about 3 s
    app.slider(key="steps").set_value(4).run()
    assert "at t=50, 4 DDIM step(s)" in app.success[0].value
    app.slider(key="timestep").set_value(1).run()
    assert app.slider(key="steps").value == 1 and app.slider(key="steps").disabled
    assert "at t=1, 1 DDIM step(s)" in app.success[0].value
    app.slider(key="timestep").set_value(8).run()
    assert app.slider(key="steps").value == 1 and "at t=8, 1 DDIM step(s)" in app.success[0].value
    assert "All 2,000 ID reference images" in charts(app)[0]["layout"]["title"]["text"]

    app.selectbox(key="score").set_value("mse").run()
    app.switch_page(WALK_PAGE).run()
    assert not app.exception
    trace = app.session_state["walkthrough_trace"]
    assert (trace.score_name, trace.timestep, trace.steps) == ("mse", 8, 1)
    assert app.selectbox(key="score").value == "mse" and app.slider(key="timestep").value == 8


def test_walkthrough_traces_an_image_and_the_timestep_visibly_moves_it(detector):
    app = open_page(WALK_PAGE)
    headers = [h.value for h in app.header]
    assert headers[:7] == [
        "1 · The image",
        "2 · Layer-wise features",
        "3 · Add noise up to timestep t",
        "4 · Reconstruct with the diffusion model",
        "5 · Compare, stage by stage",
        "6 · One score, placed among ID images",
        "7 · Verdict",
    ]
    assert headers[7] == "What counts as OOD?"
    features = explorer.load_features(detector, shipped.ID_SET).features
    reference = explorer.score_matrix(detector, features, 5)
    expected = explorer.trace_image(detector, features[0], reference, "mfsim", 5)
    trace = app.session_state["walkthrough_trace"]
    assert trace.score == expected.score and trace.profile.sentence == expected.profile.sentence
    assert trace.profile.sentence in "\n".join(e.value for e in [*app.success, *app.error])

    def noised_points() -> np.ndarray:
        figure = next(f for f in charts(app) if any(t.get("name", "").startswith("z_t at t") for t in f["data"]))
        return np.concatenate([values(t["y"]) for t in figure["data"] if t["name"].startswith("z_t")])

    def reconstruction_points() -> np.ndarray:
        figure = next(f for f in charts(app) if any(t.get("name", "").startswith("ẑ₀") for t in f["data"]))
        return np.concatenate([values(t["y"]) for t in figure["data"] if t["name"].startswith("ẑ₀")])

    before, rebuilt = noised_points(), reconstruction_points()
    np.testing.assert_allclose(before, trace.noised, atol=1e-6)
    app.slider(key="timestep").set_value(30).run()
    assert not app.exception
    after = app.session_state["walkthrough_trace"]
    assert np.abs(noised_points() - before).mean() > 0.1 and not np.allclose(reconstruction_points(), rebuilt)
    assert f"{after.noise_scale:.3f} · ε" in "\n".join(m.value for m in app.markdown)

    # What counts as OOD? A vertical flip, scored like the core scores it.
    app.pills(key="walk_shift").set_value("vflip").run()
    # A shift whose features are not cached yet is extracted in the background while the page shows progress and
    # stops (keeping the previous comparison); the page is rerun until the new one is there, as the user sees it.
    deadline = time.monotonic() + 240
    while app.session_state["walkthrough_shift"].shift != "vflip" and time.monotonic() < deadline:
        assert not app.exception
        time.sleep(0.5)
        app.run()
    assert not app.exception
    comparison = app.session_state["walkthrough_shift"]
    assert comparison.shift == "vflip"
    rows = explorer.shift_rows(len(features))
    shifted = explorer.shifted_features(_extractor(detector), detector.input_size, shipped.ID_SET, rows, "vflip")
    core = explorer.compare_shift(detector, features[torch.as_tensor(rows)], shifted, "vflip", "mfsim", 30)
    assert comparison.metrics.auroc == pytest.approx(core.metrics.auroc, abs=1e-9)
    assert app.metric[0].value == f"{100 * core.metrics.auroc:.1f} %"


def test_walkthrough_of_an_ood_demo_image_and_of_an_upload(detector):
    app = open_page(WALK_PAGE)
    app.selectbox(key="walk_set").set_value("demo:textures").run()
    trace = app.session_state["walkthrough_trace"]
    assert trace.verdict == "OOD" and "OOD" in app.error[0].value and trace.profile.sentence in app.error[0].value
    app.radio(key="walk_source").set_value("an upload").run()
    assert "Upload an image" in app.info[0].value
    app.file_uploader[0].set_value([("texture.png", demo_png("demo:textures", 0), "image/png")]).run()
    assert not app.exception
    uploaded = app.session_state["walkthrough_trace"]
    files = [("texture.png", demo_png("demo:textures", 0))]
    features = explorer.prepare_uploads(_extractor(detector), detector.input_size, files).features
    reference = explorer.score_matrix(detector, explorer.load_features(detector, shipped.ID_SET).features, 5)
    expected = explorer.trace_image(detector, features[0], reference, "mfsim", 5)
    assert uploaded.verdict == "OOD" and uploaded.score == expected.score
    np.testing.assert_array_equal(uploaded.features, expected.features)
