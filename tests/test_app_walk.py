"""What a walk through every page as a teacher and as a researcher found (issue 15, section 3), checked with AppTest."""

from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

torch.set_num_threads(1)
APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 240


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
