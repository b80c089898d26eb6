"""The app under bad input: extreme aspect ratios, a damaged model, a NaN score, a hostile run name. No page crashes,
the cards after a bad one are still drawn, and the Train page never writes outside the checkpoints folder."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from dlsr_core import explorer
from dlsr_core.atomic import sha256_hex
from dlsr_core.checkpoint import DIGEST_KEY, FIRST_NAME, LAST_NAME, checksum_path, content_digest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def _png(size, colour=255) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _open(page: str | None = None, **state) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=240)
    for key, value in state.items():
        app.session_state[key] = value
    app.run()
    if page:
        app.switch_page(page).run()
    return app


def _texts(app: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in getattr(app, kind))


@pytest.fixture
def shipped(run_dir):
    return run_dir  # skips when the shipped model is absent


def test_extreme_aspect_ratios_do_not_stop_the_cards_after_them(shipped):
    files = [
        ("wide_150x1.png", _png((150, 1))),
        ("wide_10000x1.png", _png((10000, 1))),
        ("tall_1x10000.png", _png((1, 10000))),
        ("normal.png", _png((40, 40), 120)),
    ]
    app = _open("pages/score_images.py", score_uploads=files)
    assert not app.exception, [e.value for e in app.exception]
    assert "Scored 4 image(s)" in app.success[0].value
    results = app.session_state["score_results"]
    assert [r.name for r in results] == [name for name, _ in files]
    cards = app.get("image")
    assert len(cards) == len(files), "every result card, including the one after the extreme images, is drawn"


def test_a_nan_score_gets_no_verdict(shipped, monkeypatch):
    real = explorer.uploads.score_matrix

    def nan_scores(*args, **kwargs):
        scores = real(*args, **kwargs)
        scores["mfsim"] = np.full_like(scores["mfsim"], np.nan)
        return scores

    monkeypatch.setattr(explorer.uploads, "score_matrix", nan_scores)
    app = _open("pages/score_images.py", score_uploads=[("normal.png", _png((40, 40), 120))])
    assert not app.exception
    assert "0 OOD, 0 ID" in app.success[0].value
    assert "no verdict" in _texts(app, "error")
    assert app.session_state["score_results"][0].verdict == "no verdict"


def test_a_damaged_model_is_explained_on_every_page(shipped, tmp_path, monkeypatch):
    run = tmp_path / "damaged"
    shutil.copytree(shipped, run)
    tensors = safetensors.torch.load_file(str(run / LAST_NAME))
    with safetensors.safe_open(str(run / LAST_NAME), framework="pt") as handle:
        metadata = dict(handle.metadata())
    info = json.loads(metadata["info"])
    info["config"]["width"] = str(info["config"]["width"])  # "512": a width given as text
    metadata["info"] = json.dumps(info)
    safetensors.torch.save_file(tensors, str(run / LAST_NAME), metadata=metadata)
    (run / (LAST_NAME + ".sha256")).unlink()
    monkeypatch.setenv("DLSR_RUN_DIR", str(run))
    for page in (None, "pages/score_images.py", "pages/distributions.py"):
        app = _open(page)
        assert not app.exception, [e.value for e in app.exception]
        assert "width must be an integer" in _texts(app, "error"), page


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"sampler": "bogus"}, "sampler must be one of"),
        ({"timestep": 0}, "timestep must be >= 1"),
        ({"pooling": "bogus"}, "pooling must be one of"),
        ({"std_eps": 0}, "std_eps must be in (0, 1)"),
    ],
    ids=["sampler-bogus", "timestep-0", "pooling-bogus", "std-eps-0"],
)
def test_bad_options_in_a_consistent_checkpoint_are_explained_on_every_page(
    change, needle, shipped, tmp_path, monkeypatch
):
    """The file is intact (embedded digest and checksum file match); only the option values it records are bad."""
    run = tmp_path / "bad_options"
    shutil.copytree(shipped, run)
    for name in (LAST_NAME, FIRST_NAME):
        path = run / name
        tensors = safetensors.torch.load_file(str(path))
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata())
        metadata["info"] = json.dumps({**json.loads(metadata["info"]), **change})
        metadata[DIGEST_KEY] = content_digest(tensors, metadata)
        data = safetensors.torch.save(tensors, metadata=metadata)
        path.write_bytes(data)
        checksum_path(path).write_text(f"{sha256_hex(data)}  {name}\n")
    monkeypatch.setenv("DLSR_RUN_DIR", str(run))
    for page in (None, "pages/score_images.py", "pages/distributions.py", "pages/how_dlsr_works.py"):
        app = _open(page)
        assert not app.exception, (page, [e.value for e in app.exception])
        assert needle in _texts(app, "error"), page


@pytest.mark.parametrize("name", ["..", "../outside", "/tmp/abs", ".", "default", "default\n", "run\n", "run\r\n"])
def test_train_page_refuses_run_names_outside_the_checkpoints_folder(name, tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    root.mkdir()
    monkeypatch.setenv("DLSR_CHECKPOINTS_DIR", str(root))
    app = _open("pages/train.py")
    next(box for box in app.text_input if box.label == "Run name").set_value(name)
    next(b for b in app.button if b.label == "Start training").click().run()
    assert not app.exception
    assert "Cannot start" in _texts(app, "error")
    assert "train_job" not in app.session_state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"] and not any(root.iterdir())
