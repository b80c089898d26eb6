"""What a walk through every page as a teacher and as a researcher found (issue 15, section 3), checked with AppTest."""

import json
from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest
from test_app_explain import values

from dlsr_core import explorer

torch.set_num_threads(1)
APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 240
WALK_PAGE, SCORE_PAGE = "pages/how_dlsr_works.py", "pages/score_images.py"
STILL_ID = 124  # a demo ID image with an ID verdict and three stages outside the ID range (MFsim, t = 5)


def open_page(page: str | None = None, **state) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        app.session_state[key] = value
    app.run()
    if page is not None:
        app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


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
    app.radio(key="walk_source").set_value("a demo set").run()
    assert app.selectbox(key="walk_set").value == "demo:textures" and app.number_input(key="walk_index").value == 7
    assert app.session_state["walkthrough_trace"].verdict == "OOD"
    app.pills(key="walk_shift").set_value("vflip").run()
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


def test_an_id_verdict_with_red_stages_says_why(detector):
    app = open_page(WALK_PAGE, walk_index=STILL_ID)
    trace = app.session_state["walkthrough_trace"]
    assert trace.verdict == "ID" and trace.profile.status.count("worse") >= 1  # the case this test is about
    assert "Still ID: MFsim averages the cosines of all stages" in app.success[0].value
    png = explorer.encode_png(explorer.dataset_images(explorer.DEMO_ID_SET, [STILL_ID])[0])
    app = open_page(SCORE_PAGE, score_uploads=[("still_id.png", png)])
    assert app.session_state["score_results"][0].verdict == "ID"
    assert any("Still ID" in caption.value for caption in app.caption)
