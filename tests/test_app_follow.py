"""Select, filter, follow and compare, driven headlessly with AppTest on the shipped model and its experiment, and
checked against numbers computed here from the core: a map selection's grid holds exactly the selected images,
failure-case filters and pages reach every error, a link opens the same image on How DLSR works and Score images,
uploads outlive a page switch, and Compare models' AUROCs are `evaluate`'s for each model."""

import json
import re
from urllib.parse import parse_qs

import numpy as np
import pytest
import shipped
from test_app_pages import open_page, texts

from dlsr_core import explorer
from dlsr_core.evaluation import EvaluationSettings, evaluate
from dlsr_core.scoring import Detector

TITLE = re.compile(r"^\*\*(?P<name>.+?) \\#(?P<index>\d+)\*\*")
NAMES = {name: spec for spec, name in shipped.EXPERIMENT.names.items()}  # display name -> spec


@pytest.fixture(scope="module")
def demo_features(detector):
    return {spec: explorer.load_features(detector, spec) for spec in shipped.EXPERIMENT.specs}


@pytest.fixture(scope="module")
def mfsim(detector, demo_features):
    """MFsim at t = 5 (the pages' default) of every image of every set: spec -> (dataset indices, scores)."""
    return {
        spec: (f.indices.numpy(), detector.score_features(f.features, 5, with_lr=False).mfsim)
        for spec, f in demo_features.items()
    }


def card_titles(app) -> list[tuple[str, int]]:
    """(spec, index) of every image card on the page, in order (their bold first line)."""
    found = []
    for element in app.markdown:
        match = TITLE.match(str(element.value))
        if match:
            found.append((NAMES[match["name"].replace("\\", "")], int(match["index"])))
    return found


def link_tokens(app, page: str) -> list[str]:
    """The image tokens of the links to `page` (its url path, e.g. how_dlsr_works), in order."""
    return [
        parse_qs(link.proto.query_string)[explorer.IMAGE_QUERY_KEY][0]
        for link in app.get("page_link")
        if link.proto.page == page  # the url path: the file name without .py
    ]


def select_on_map(app, points: list[dict]) -> None:
    """Rerun the page as if the user had lassoed `points` on the map (what st.plotly_chart's frontend sends)."""
    chart = app.get("plotly_chart")[0]
    states = app._tree.get_widget_states()
    state = states.widgets.add()
    state.id = chart.proto.id
    selection = {"points": points, "point_indices": [p["point_index"] for p in points], "box": [], "lasso": []}
    state.string_value = json.dumps({"selection": selection})
    app._run(states)
    assert not app.exception, [e.value for e in app.exception]


def test_the_selection_grid_shows_exactly_the_selected_images_and_follows_them(detector, demo_features, mfsim):
    app = open_page("pages/feature_map.py")
    assert "Drag a lasso around points" in texts(app)
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    curve = {trace["name"]: number for number, trace in enumerate(figure["data"])}
    letters, letters_recon, id_set = curve["letters (z₀)"], curve["letters (ẑ₀)"], curve["fashion_mnist_test (z₀)"]
    picked = [(letters, 0), (letters, 1), (letters_recon, 1), (id_set, 5), (letters, 2)]
    points = [
        {"curve_number": c, "point_number": p, "point_index": p, "customdata": figure["data"][c]["customdata"][p]}
        for c, p in picked
    ]
    select_on_map(app, points)
    # The reconstruction of letters point 1 is the same image as point 1: four images, in the order selected.
    expected = [("demo:letters", points[0]["customdata"][2]), ("demo:letters", points[1]["customdata"][2])]
    expected += [(shipped.ID_SET, points[3]["customdata"][2]), ("demo:letters", points[4]["customdata"][2])]
    assert points[2]["customdata"][2] == points[1]["customdata"][2]
    assert "**4 image(s)** from 5 selected point(s)" in texts(app)
    assert card_titles(app) == expected
    # Each card's score is the image's own MFsim (the core's), and its links open that image.
    for (spec, index), element in zip(expected, [m for m in app.markdown if TITLE.match(str(m.value))], strict=True):
        indices, scores = mfsim[spec]
        assert f"MFsim = `{scores[np.flatnonzero(indices == index)[0]]:.4g}`" in element.value
    assert link_tokens(app, "how_dlsr_works") == [explorer.ImageRef.of_set(*e).token for e in expected]
    assert len(app.get("html")) >= 4  # a layer profile per card


def test_failure_filters_and_pages_reach_every_error_and_a_link_opens_it(detector, demo_features, mfsim):
    id_indices, id_scores = mfsim[shipped.ID_SET]
    threshold = explorer.id_threshold95(id_scores)
    missed = sorted(
        (score, spec, int(index))
        for spec in shipped.OOD_SETS
        for index, score in zip(*mfsim[spec], strict=True)
        if score <= threshold
    )
    app = open_page("pages/failure_cases.py")
    app.multiselect(key="failure_sets").set_value(list(shipped.OOD_SETS))  # OOD errors only
    app.selectbox(key="failure_per_page").set_value(48).run()
    assert f"OOD accepted as ID: {len(missed)}" in texts(app) and "None with these filters" in texts(app)
    pages = -(-len(missed) // 48)
    seen = card_titles(app)
    for page in range(2, pages + 1):  # every page of the OOD errors, most ID-like first
        app.get("pagination")[0].set_value(page).run()
        assert not app.exception
        seen += card_titles(app)
    assert seen == [(spec, index) for _, spec, index in missed]

    # The letters alone: the few missed letters, wherever they rank among all errors, are on the first page.
    app.multiselect(key="failure_sets").set_value(["demo:letters"]).run()
    letters = [(spec, index) for _, spec, index in missed if spec == "demo:letters"]
    assert card_titles(app) == letters and letters
    ranks = [rank for rank, (_, spec, _) in enumerate(missed, 1) if spec == "demo:letters"]
    assert [int(r) for r in re.findall(r"· rank (\d+)", texts(app))] == ranks
    assert f"OOD accepted as ID: {len(letters)} of {len(missed)} (filtered)" in texts(app)

    # One click from a failure case: How DLSR works traces that very image.
    spec, index = letters[0]
    token = link_tokens(app, "how_dlsr_works")[0]
    assert token == explorer.ImageRef.of_set(spec, index).token
    app.query_params = {explorer.IMAGE_QUERY_KEY: token}
    app.switch_page("pages/how_dlsr_works.py").run()
    assert not app.exception
    assert (app.session_state["walk_set"], app.session_state["walk_index"]) == (spec, index)
    features = demo_features[spec]
    row = int(np.flatnonzero(features.indices.numpy() == index)[0])
    np.testing.assert_array_equal(app.session_state["walkthrough_trace"].features, features.features[row].numpy())

    # … and Score images scores it: the same score as the set's own.
    app.query_params = {explorer.IMAGE_QUERY_KEY: token}
    app.switch_page("pages/score_images.py").run()
    assert not app.exception and f"opened from another page: letters #{index}" in texts(app)
    indices, scores = mfsim[spec]
    [result] = app.session_state["score_results"]
    assert result.score == pytest.approx(float(scores[np.flatnonzero(indices == index)[0]]), abs=1e-6)


def test_uploads_stay_when_the_user_comes_back_and_follow_to_how_dlsr_works():
    png = explorer.encode_png(explorer.dataset_images("demo:letters", [7])[0])
    app = open_page("pages/score_images.py")
    app.file_uploader[0].set_value([("letter.png", png, "image/png")]).run()
    assert "Scored 1 image(s)" in app.success[0].value
    before = app.session_state["score_results"][0].score
    app.switch_page("pages/home.py").run()
    app.switch_page("pages/score_images.py").run()
    assert not app.exception
    assert "Scored 1 image(s)" in app.success[0].value and "kept from before" in texts(app)
    assert app.session_state["score_results"][0].score == before  # the same file keeps its score

    [token] = link_tokens(app, "how_dlsr_works")
    assert explorer.ImageRef.from_token(token).is_upload
    app.query_params = {explorer.IMAGE_QUERY_KEY: token}
    app.switch_page("pages/how_dlsr_works.py").run()
    assert not app.exception and app.session_state["walk_source"] == "an upload"
    assert app.session_state["walkthrough_trace"].score == pytest.approx(before, abs=1e-9)
    app.query_params = {}
    app.switch_page("pages/home.py").run()
    app.switch_page("pages/how_dlsr_works.py").run()  # back without a link: the upload is still traced
    assert not app.exception and "uploaded before in this session" in texts(app)
    assert app.session_state["walkthrough_trace"].score == pytest.approx(before, abs=1e-9)


def test_compare_models_aurocs_equal_evaluate_for_each_model(detector, run_dir, demo_features):
    app = open_page("pages/compare_models.py")
    assert app.selectbox(key="compare_model_b").value == str(run_dir / "first.safetensors")
    table = app.dataframe[0].value.set_index("OOD set")
    id_features = demo_features[shipped.ID_SET].features
    ood = {spec: demo_features[spec].features for spec in shipped.OOD_SETS}
    for column, model in (("AUROC A %", detector), ("AUROC B %", Detector.load(run_dir / "first.safetensors"))):
        report = evaluate(model, shipped.ID_SET, id_features, ood, EvaluationSettings(timestep=5))
        for spec in shipped.OOD_SETS:
            expected = 100 * report.metric(spec, "mfsim").auroc
            assert table.loc[spec.removeprefix("demo:"), column] == pytest.approx(expected, abs=1e-9)
    count = int(re.search(r"Images the two models disagree on: (\d+)", texts(app))[1])
    assert count > 0 and len(card_titles(app)) == min(count, 12)


def test_a_second_model_that_cannot_be_loaded_gets_a_message(tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "last.safetensors").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("DLSR_CHECKPOINTS_DIR", str(tmp_path))
    app = open_page("pages/compare_models.py")
    app.selectbox(key="compare_model_b").set_value(str(broken)).run()
    assert not app.exception
    assert "Model B" in app.error[0].value and "cannot be loaded" in app.error[0].value
