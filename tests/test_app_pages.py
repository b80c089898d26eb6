"""Every page of the Streamlit app driven headlessly with AppTest on the shipped model and the demo sets.

The model and the feature sets are cached per process (st.cache_resource), so the pages share one load.
"""

import time
from pathlib import Path

import numpy as np
import torch
from streamlit.testing.v1 import AppTest
from test_explorer import BAD, bad_and_odd_files

from dlsr_core import explorer

torch.set_num_threads(1)
APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 240


def open_page(page: str | None = None, **state) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        app.session_state[key] = value
    app.run()
    if page is not None:
        app.switch_page(page)
        app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def texts(app: AppTest) -> str:
    parts = [
        e.value
        for kind in ("markdown", "caption", "success", "info", "error", "warning", "title", "subheader")
        for e in getattr(app, kind)
    ]
    return "\n".join(str(p) for p in parts)


def test_home_shows_the_loaded_model(detector):
    app = open_page()
    assert app.title[0].value == "DLSR Explorer"
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Backbone"] == detector.backbone
    assert metrics["Trained on"] == detector.info.dataset
    assert metrics["Epochs"] == str(detector.info.epoch)
    assert len(app.get("image")) == 1, "the DLSR diagram is shown"


def test_switching_pages_does_not_reload_the_model(monkeypatch):
    from dlsr_core import scoring

    loads = []
    original = scoring.Detector.load.__func__
    monkeypatch.setattr(
        scoring.Detector, "load", classmethod(lambda cls, *a, **k: loads.append(a) or original(cls, *a, **k))
    )
    app = open_page()
    for page in ("pages/train.py", "pages/home.py", "pages/train.py", "pages/home.py"):
        app.switch_page(page).run()
        assert not app.exception
    assert len(loads) <= 1, f"the model was loaded {len(loads)} times"


def test_score_page_scores_good_files_and_explains_bad_ones(detector):
    files = list(bad_and_odd_files().items())
    app = open_page("pages/score_images.py", score_uploads=files)
    errors = [e.value for e in app.error]
    assert len(errors) == len(BAD) and all(any(name in e for e in errors) for name in BAD)
    assert "decompression bomb" in "\n".join(errors)
    good = len(files) - len(BAD)
    assert f"Scored {good} image(s) at t=5" in app.success[0].value
    assert "first frame" in texts(app) and "16-bit" in texts(app)
    results = app.session_state["score_results"]
    assert len(results) == good and all(r.verdict in ("ID", "OOD") for r in results)

    # A timestep change re-scores from cached features: the backbone does not run again.
    started = time.perf_counter()
    app.slider(key="timestep").set_value(8).run()
    elapsed = time.perf_counter() - started
    assert not app.exception
    assert "at t=8" in app.success[0].value
    print(f"\ntimestep change on the Score page answered in {elapsed:.2f} s")
    assert elapsed < 10, f"timestep change took {elapsed:.1f} s"
    new = app.session_state["score_results"]
    features = explorer.prepare_uploads(_extractor(detector), detector.input_size, files).features
    np.testing.assert_allclose([r.score for r in new], detector.score_features(features, 8).mfsim, rtol=1e-4)


def _extractor(detector):
    from dlsr_core.backbones import create_feature_extractor

    return create_feature_extractor(detector.backbone, detector.backbone_weights())


def test_score_page_through_the_file_uploader():
    app = open_page("pages/score_images.py")
    files = bad_and_odd_files()
    app.file_uploader[0].set_value(
        [("photo.jpg", files["photo.jpg"], "image/jpeg"), ("zero.jpg", b"", "image/jpeg")]
    ).run()
    assert not app.exception
    assert "zero.jpg" in app.error[0].value and "Scored 1 image(s)" in app.success[0].value


def test_wrong_backbone_checkpoint_is_explained_not_crashed(wrong_backbone_run, monkeypatch):
    run = wrong_backbone_run
    monkeypatch.setenv("DLSR_CHECKPOINTS_DIR", str(run.parent))
    app = open_page()
    app.selectbox[0].set_value(str(run)).run()
    assert app.session_state["run_dir"] == str(run)
    app.switch_page("pages/score_images.py")
    app.session_state["score_uploads"] = [("photo.jpg", bad_and_odd_files()["photo.jpg"])]
    app.run()
    assert not app.exception
    assert "Wrong backbone" in app.error[0].value and "720-d" in app.error[0].value
    app.switch_page("pages/distributions.py").run()
    assert not app.exception and "Wrong backbone" in app.error[0].value
