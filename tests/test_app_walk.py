"""What a walk through every page as a teacher and as a researcher found (issue 15, section 3), checked with AppTest."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import shipped
import torch
from streamlit.testing.v1 import AppTest
from test_app_explain import values
from test_app_pages import open_page

from dlsr_core import explorer

torch.set_num_threads(1)
WALK_PAGE, SCORE_PAGE = "pages/how_dlsr_works.py", "pages/score_images.py"
STILL_ID = 124  # a demo ID image with an ID verdict and three stages outside the ID range (MFsim, t = 5)


def test_home_sends_a_teacher_to_how_dlsr_works_first():
    app = open_page()
    assert app.info[0].value.startswith("Next: **How DLSR works**")


def test_train_shows_only_the_chosen_sources_fields():
    app = open_page("pages/train.py")
    labels = lambda kind: [w.label for w in getattr(app, kind)]  # noqa: E731
    assert "Built-in set" in labels("selectbox")
    assert not {"torchvision dataset", "Image folder path"} & set(labels("text_input"))
    assert "Allow download (needs network)" not in labels("checkbox")
    app.radio[0].set_value("Image folder").run()
    assert "Image folder path" in labels("text_input") and "Built-in set" not in labels("selectbox")
    assert "Data folder (optional)" not in labels("text_input")
    app.radio[0].set_value("torchvision by name").run()
    assert {"torchvision dataset", "Data folder (optional)"} <= set(labels("text_input"))
    assert "Allow download (needs network)" in labels("checkbox")


def charts(app: AppTest) -> dict[str, dict]:
    return {element.proto.id: json.loads(element.proto.spec) for element in app.get("plotly_chart")}


def chart(app: AppTest, key: str) -> dict:
    return next(spec for element_id, spec in charts(app).items() if key in element_id)


def test_walkthrough_keeps_its_image_and_shift_when_the_user_clicks_around():
    app = open_page(WALK_PAGE)
    app.selectbox(key="walk_set").set_value("demo:textures").run()
    app.number_input(key="walk_index").set_value(7).run()
    app.radio(key="walk_source").set_value("an upload").run()
    app.radio(key="walk_source").set_value("a set of the experiment").run()
    assert app.selectbox(key="walk_set").value == "demo:textures" and app.number_input(key="walk_index").value == 7
    assert app.session_state["walkthrough_trace"].verdict == "OOD"
    app.pills(key="walk_shift").set_value("vflip").run()
    deadline = time.time() + 240  # a new shift's set is extracted once, in the background, while the page waits
    while app.session_state["walkthrough_shift"].shift != "vflip" and time.time() < deadline:
        time.sleep(0.5)
        app.run()
    app.pills(key="walk_shift").set_value(None).run()  # a click on the selected pill
    assert not app.exception
    assert app.pills(key="walk_shift").value == "vflip" and app.session_state["walkthrough_shift"].shift == "vflip"


def test_step_4_puts_each_stage_against_the_id_range_and_step_5_keeps_numbers_inside():
    app = open_page(WALK_PAGE)
    app.selectbox(key="walk_set").set_value("demo:textures").run()
    trace = app.session_state["walkthrough_trace"]
    titles = [a["text"] for a in chart(app, "walk-reconstruction")["layout"]["annotations"]]
    for title, value, low, high in zip(
        titles, trace.profile.values, trace.profile.band_low, trace.profile.band_high, strict=True
    ):
        assert f"cos {value:.3f}" in title and f"ID {low:.3f}–{high:.3f}" in title and "#b83b3b" in title
    figure = chart(app, "walk-compare")
    low, high = figure["layout"]["xaxis"]["range"]
    cosine = next(t for t in figure["data"] if t.get("mode") == "markers+text" and t["xaxis"] == "x")
    for x, side in zip(values(cosine["x"]), cosine["textposition"], strict=True):
        assert low < x < high and side == ("middle right" if x < (low + high) / 2 else "middle left")
    profile = next(t for t in figure["data"] if t.get("mode") == "markers+text" and t["xaxis"] == "x2")
    assert all(side == "middle left" for side in profile["textposition"])  # 100 %: the label sits left of the dot
    assert profile["text"] == [f"{explorer.percent_text(p)} %" for p in trace.profile.worse_than]


def test_lr_profiles_say_gained_more_from_training_everywhere():
    app = open_page(WALK_PAGE)
    app.selectbox(key="score").set_value("lr").run()
    profile = app.session_state["walkthrough_trace"].profile
    assert profile.comparison == "gained more from training than"
    titles = [a["text"] for a in chart(app, "walk-compare")["layout"]["annotations"]]
    assert "gained more from training than … % of ID images" in titles
    assert not any("worse than" in title for title in titles)
    png = explorer.encode_png(explorer.dataset_images("demo:letters", [0])[0])
    app = open_page(SCORE_PAGE, score_uploads=[("letter.png", png)])
    app.selectbox(key="score").set_value("lr").run()
    cards = [element.proto.body for element in app.get("html")]
    assert cards and all("gained more from training than … %" in card and "worse than" not in card for card in cards)


def test_an_id_verdict_with_red_stages_says_why(detector):
    app = open_page(WALK_PAGE, walk_index=STILL_ID)
    trace = app.session_state["walkthrough_trace"]
    assert trace.verdict == "ID" and trace.profile.status.count("worse") >= 1  # the case this test is about
    assert "Still ID: MFsim averages the cosines of all stages" in app.success[0].value
    png = explorer.encode_png(explorer.dataset_images(shipped.ID_SET, [STILL_ID])[0])
    app = open_page(SCORE_PAGE, score_uploads=[("still_id.png", png)])
    assert app.session_state["score_results"][0].verdict == "ID"
    assert any("Still ID" in caption.value for caption in app.caption)


def test_fig3_text_follows_its_numbers_and_both_panels_share_the_axis(detector):
    app = open_page("pages/distributions.py")
    app.radio(key="distributions_view").set_value("First vs last epoch (paper Fig. 3)").run()
    app.selectbox(key="fig3_score").set_value("mse").run()
    assert not app.exception
    figures = list(charts(app).values())
    assert len(figures) == 2
    for axis in ("xaxis", "yaxis"):
        assert figures[0]["layout"][axis]["range"] == figures[1]["layout"][axis]["range"]
    assert [t["xbins"] for t in figures[0]["data"]] == [t["xbins"] for t in figures[1]["data"]]
    sentence = next(m.value for m in app.markdown if m.value.startswith("From epoch"))
    assert "stay high" not in "\n".join(m.value for m in app.markdown)
    specs = [shipped.ID_SET, *shipped.OOD_SETS]
    features = {spec: explorer.load_features(detector, spec).features for spec in specs}
    early = explorer.detector_at(detector, explorer.epoch_checkpoints(detector)[0])
    medians = []
    for model in (early, detector):
        scores = explorer.epoch_scores(model, features, "mse", 5)
        ood = np.concatenate([scores[s] for s in shipped.OOD_SETS])
        medians.append((np.median(scores[shipped.ID_SET]), np.median(ood)))
    (id_before, ood_before), (id_after, ood_after) = medians
    assert ood_after < ood_before  # the walk's observation: OOD MSE falls with training, it does not stay high
    assert f"OOD scores fell (median {ood_before:.4g} → {ood_after:.4g})" in sentence
    assert f"ID scores fell (median {id_before:.4g} → {id_after:.4g})" in sentence


def test_fig4_gives_every_set_its_own_panel():
    app = open_page("pages/distributions.py")
    app.radio(key="distributions_view").set_value("Timestep sweep (paper Fig. 4)").run()
    next(m for m in app.multiselect if m.label == "Timesteps").set_value([2, 5])
    next(n for n in app.number_input if n.label == "Images per set").set_value(100)
    next(b for b in app.button if b.label == "Run sweep").click().run()
    figure = chart(app, "sweep-plot")
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert titles == [s.removeprefix("demo:") for s in shipped.OOD_SETS] + ["average"]
    assert len({t["xaxis"] for t in figure["data"]}) == len(titles)  # one curve per panel, none on top of another


def test_speeds_are_one_comparable_column_sorted():
    speeds = explorer.measured_speeds(["mfsim", "pixel_ddpm", "energy", "knn", "no_such_method"])
    rates = [rate for _, _, rate in speeds.rows]
    assert [name for name, _, _ in speeds.rows] != [] and rates == sorted(rates, reverse=True)
    assert {name for name, _, _ in speeds.rows} == {"mfsim", "pixel_ddpm", "energy", "knn"}
    assert speeds.mfsim_over_pixel_ddpm > 10  # 15.3 measured on a quiet machine
    assert explorer.measured_speeds(["mfsim"], Path("/no/such/file.json")) is None
    app = open_page("pages/distributions.py")
    table = next(frame.value for frame in app.dataframe if "images/s end to end" in frame.value.columns)
    assert list(table["images/s end to end"]) == sorted(table["images/s end to end"], reverse=True)
    assert set(table["method"]) == {"DLSR MSE", "DLSR MFsim", "DLSR LR", "k-NN", "Mahalanobis"}


def test_feature_vs_pixel_quotes_the_benchmark_and_explains_the_two_t():
    app = open_page("pages/feature_vs_pixel.py")
    captions = "\n".join(c.value for c in app.caption)
    ratio = explorer.measured_speeds(["mfsim"]).mfsim_over_pixel_ddpm
    assert f"**{ratio:.1f}×** faster end to end" in captions
    assert "The two t are on different scales" in captions and "1,000 steps" in captions and "100 steps" in captions


def test_training_effect_reads_known_numbers():
    before, after = explorer.EpochSummary(1, 40.0, 117.7, 0.80), explorer.EpochSummary(10, 3.0, 34.8, 0.98)
    text = explorer.training_effect("MSE", before, after)
    assert text.startswith("From epoch 1 to epoch 10, ID scores fell (median 40 → 3) and OOD scores fell (median")
    assert "ID scores further: to 8% of their epoch-1 distance from a perfect reconstruction (MSE = 0), OOD" in text
    assert "OOD scores to 30%." in text and text.endswith("The separation grew: AUROC 80.0 % → 98.0 %.")
    worse = explorer.training_effect(
        "MFsim", explorer.EpochSummary(1, -0.99, -0.90, 0.9), explorer.EpochSummary(5, -0.99, -0.95, 0.7)
    )
    assert "ID scores stayed about the same" in worse and "shrank: AUROC 90.0 % → 70.0 %" in worse


def test_after_home_the_next_pages_needs_are_loaded_in_the_background(detector, monkeypatch):
    from pages import shared

    app = open_page()
    once = shared._once()
    run_dir = shared.current_run_dir()
    extractor = ("extractor", detector.backbone, detector.backbone_weights(), detector.feature_options)
    scores = ("scores", shared.fingerprint(run_dir), shipped.ID_SET, 5, 1, 1, True)
    baselines = explorer.baselines_key()  # the shipped baselines folder and its files' fingerprints
    deadline = time.time() + 240
    while not all(once.ready(key) for key in (baselines, extractor, scores)) and time.time() < deadline:
        time.sleep(0.5)
    assert once.ready(baselines) and once.ready(extractor) and once.ready(scores)
    # Score distributions opens on the demo sets' scores at the model's own setting: already there, not recomputed.
    monkeypatch.setattr(explorer, "score_matrix", lambda *a, **k: pytest.fail("recomputed"))
    app.switch_page("pages/distributions.py").run()
    assert not app.exception, [e.value for e in app.exception]


def test_compare_models_opens_on_first_epoch_scores_the_background_computed(monkeypatch):
    """Model B defaults to the loaded run's first epoch: warm_up scores every set with it, so the first visit to
    Compare models computes no score."""
    from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector
    from pages import shared

    open_page()
    once, run_dir = shared._once(), shared.current_run_dir()
    first_epoch = shared.fingerprint(run_dir / "first.safetensors")
    keys = [("scores", first_epoch, spec, 5, DEFAULT_STEPS, DEFAULT_DRAWS, False) for spec in shipped.EXPERIMENT.specs]
    deadline = time.time() + 240
    while not all(once.ready(key) for key in keys) and time.time() < deadline:
        time.sleep(0.5)
    assert [key[2] for key in keys if not once.ready(key)] == []
    # The same scores as the page's own model B (the first epoch's file, loaded on its own) would compute.
    page_model_b = Detector.load(run_dir / "first.safetensors")
    id_rows = explorer.reference_subset(explorer.cached_features_only(page_model_b, shipped.ID_SET))
    expected = explorer.score_matrix(page_model_b, id_rows.features, 5, DEFAULT_STEPS, draws=DEFAULT_DRAWS)
    id_key = next(key for key in keys if key[2] == shipped.ID_SET)
    assert np.array_equal(once.get(id_key, dict)["mfsim"], expected["mfsim"])
    monkeypatch.setattr(explorer, "score_matrix", lambda *a, **k: pytest.fail("recomputed"))
    app = open_page("pages/compare_models.py")
    assert app.selectbox(key="compare_model_b").value == str(run_dir / "first.safetensors")
    assert "AUROC on the same sets" in [header.value for header in app.subheader]
