"""Your data, your detector, end to end: an ImageFolder ID set (three synthetic classes, train/ and test/ folders) and
OOD folders, a tiny model trained on them by the CLI, its experiment file, `evaluate` and `score --explain` without
set flags, and every page of the app on that run — no page names the shipped demo's data, the ID set shown is the
folder, failure categories use the folder's class names, and the Score distributions page gives evaluate's AUROC."""

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_app_pages import open_page, texts

from dlsr_core import embedding, explorer
from dlsr_core.cli import main as cli_main
from dlsr_core.data import EXPERIMENT_NAME, load_experiment, open_dataset

CLASSES = ("circles", "squares", "stripes")
PAGES = (
    "pages/home.py",
    "pages/experiment.py",
    "pages/score_images.py",
    "pages/how_dlsr_works.py",
    "pages/distributions.py",
    "pages/feature_map.py",
    "pages/failure_cases.py",
    "pages/feature_vs_pixel.py",
    "pages/train.py",
)


def _shape(kind: str, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(image)
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    x, y, size = (int(v) for v in rng.integers(4, 12, 3))
    if kind == "circles":
        draw.ellipse([x, y, x + size + 10, y + size + 10], fill=colour)
    elif kind == "squares":
        draw.rectangle([x, y, x + size + 10, y + size + 10], fill=colour)
    else:
        for row in range(int(rng.integers(0, 4)), 32, 6):
            draw.line([0, row, 31, row], fill=colour, width=2)
    return image


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> dict:
    """ID folders id/train/<class>/ and id/test/<class>/, two OOD folders, and a run trained on them by the CLI
    (efficientnet_lite0 at 32 px, LFDN 32 x 1, 2 epochs), with its own feature cache."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for split, count in (("train", 48), ("test", 24)):
        for kind in CLASSES:
            (root / "id" / split / kind).mkdir(parents=True)
            for i in range(count):
                _shape(kind, rng).save(root / "id" / split / kind / f"{i}.png")
    (root / "noise").mkdir()
    (root / "gradients").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "noise" / f"{i}.png")
        ramp = np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None].repeat(32, 0).repeat(3, 2)
        Image.fromarray(np.roll(ramp, i, axis=1)).save(root / "gradients" / f"{i}.png")
    run, cache = root / "run", root / "cache"
    common = ["--cache-dir", str(cache), "--quiet"]
    code = cli_main(
        ["train", "-d", f"folder:{root / 'id' / 'train'}", "--out", str(run), "--input-size", "32"]
        + ["--width", "32", "--depth", "1", "--epochs", "2", "--train-batch-size", "32", "--lr", "1e-3"]
        + ["--far-ood", f"folder:{root / 'noise'}", "--near-ood", f"ramps=folder:{root / 'gradients'}", *common]
    )
    assert code == 0
    report = root / "evaluation.json"
    assert cli_main(["evaluate", "--checkpoint", str(run), "--json", str(report), *common]) == 0
    return {"root": root, "run": run, "cache": cache, "report": json.loads(report.read_text())}


def test_train_writes_the_experiment_with_the_test_folder_and_the_class_names(own_data):
    root = own_data["root"]
    experiment = load_experiment(own_data["run"] / EXPERIMENT_NAME)
    assert experiment.training_set == f"folder:{root / 'id' / 'train'}"
    assert experiment.id_set.spec == f"folder:{root / 'id' / 'test'}" and experiment.id_set.name == "id test"
    assert experiment.class_names == CLASSES
    assert [(s.name, s.group) for s in experiment.ood_sets] == [("noise", "far"), ("ramps", "near")]
    dataset = open_dataset(experiment.id_set.spec)
    assert dataset.class_names == CLASSES and dataset.labels[:24] == [0] * 24


def test_evaluate_without_set_flags_is_the_experiment(own_data, tmp_path):
    root, run, report = own_data["root"], own_data["run"], own_data["report"]
    assert report["id_set"] == f"folder:{root / 'id' / 'test'}"
    explicit = tmp_path / "explicit.json"
    flags = [
        "--id",
        f"folder:{root / 'id' / 'test'}",
        "--ood",
        f"folder:{root / 'noise'}",
        f"folder:{root / 'gradients'}",
    ]
    assert cli_main(["evaluate", "--checkpoint", str(run), *flags, "--json", str(explicit)]
                    + ["--cache-dir", str(own_data["cache"]), "--quiet"]) == 0  # fmt: skip
    assert json.loads(explicit.read_text())["rows"] == report["rows"]


def test_score_explain_uses_the_experiments_id_set(own_data, tmp_path, capsys):
    root, run = own_data["root"], own_data["run"]
    common = [
        "--checkpoint",
        str(run),
        "--images",
        str(root / "noise" / "0.png"),
        "--cache-dir",
        str(own_data["cache"]),
    ]
    assert cli_main(["score", *common, "--explain", "-o", str(tmp_path / "a.csv")]) == 0
    assert f"layer profiles against folder:{root / 'id' / 'test'}" in capsys.readouterr().err
    given = ["--explain", f"folder:{root / 'id' / 'test'}", "-o", str(tmp_path / "b.csv"), "--quiet"]
    assert cli_main(["score", *common, *given]) == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_a_damaged_experiment_file_is_a_clear_error(own_data, tmp_path, capsys):
    run = tmp_path / "copy"
    run.mkdir()
    for file in own_data["run"].glob("*.safetensors*"):
        (run / file.name).write_bytes(file.read_bytes())
    (run / EXPERIMENT_NAME).write_text('{"format": "dlsr-experiment", "format_version": 1, "training_set": 3}')
    assert cli_main(["evaluate", "--checkpoint", str(run), "--cache-dir", str(own_data["cache"]), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run / EXPERIMENT_NAME}: experiment.training_set must be a string")
    assert len(err.splitlines()) == 1 and "fix or delete the file" in err


def _page_text(app) -> str:
    """Every text the page shows: text elements, tables, metrics and the chosen value of each selectbox."""
    parts = [texts(app), texts(app.sidebar)]
    parts += [str(e.value) for kind in ("metric", "selectbox", "radio") for e in getattr(app, kind)]
    parts += [e.value.to_csv() for kind in ("table", "dataframe") for e in getattr(app, kind)]  # every cell, in full
    parts += [str(e.label) for e in app.get("expander")]
    return "\n".join(parts)


def test_every_page_studies_the_folder_experiment(own_data, monkeypatch):
    monkeypatch.setenv("DLSR_RUN_DIR", str(own_data["run"]))
    monkeypatch.setenv("DLSR_CACHE_DIR", str(own_data["cache"]))
    monkeypatch.setattr(embedding, "worker_process_executor", lambda: ThreadPoolExecutor(1))
    monkeypatch.setattr(embedding, "_warm_up", lambda: True)
    test_folder = f"folder:{own_data['root'] / 'id' / 'test'}"
    shown = {}
    for page in PAGES:
        # app.py (and its sidebar) runs on the first page only: AppTest re-runs just the page script after a switch
        app = open_page(None if page == "pages/home.py" else page, score_uploads=[])
        if page == "pages/score_images.py":
            next(b for b in app.button if b.label == "Use sample images").click().run()
            assert not app.exception
            assert "Scored 6 image(s)" in app.success[0].value  # two of each set: the ID folder and both OOD folders
        shown[page] = _page_text(app)
        assert not re.search("fashion", shown[page], re.IGNORECASE), f"{page} names the demo data"
    assert "Experiment:** ID `id test` · 1 far + 1 near" in shown["pages/home.py"]
    assert test_folder in shown["pages/experiment.py"] and "circles" in shown["pages/experiment.py"]
    assert f"ID: id test ({test_folder})" in shown["pages/distributions.py"]
    assert "No pixel DDPM trained on this model's training set" in shown["pages/feature_vs_pixel.py"]


def test_the_distributions_page_gives_evaluates_auroc(own_data, monkeypatch):
    monkeypatch.setenv("DLSR_RUN_DIR", str(own_data["run"]))
    monkeypatch.setenv("DLSR_CACHE_DIR", str(own_data["cache"]))
    app = open_page("pages/distributions.py")
    table = app.dataframe[0].value
    rows = {(r["ood_set"], r["score"]): 100 * r["auroc"] for r in own_data["report"]["rows"]}
    root = own_data["root"]
    for name, spec, group in (("noise", root / "noise", "far"), ("ramps", root / "gradients", "near")):
        for score, label in (("mse", "MSE"), ("mfsim", "MFsim"), ("lr", "LR")):
            assert table.loc[f"{name} ({group})", (label, "AUROC")] == pytest.approx(rows[(f"folder:{spec}", score)],
                                                                                   abs=0.006)  # fmt: skip


def test_failure_cases_use_the_folders_class_names(own_data, monkeypatch):
    monkeypatch.setenv("DLSR_RUN_DIR", str(own_data["run"]))
    monkeypatch.setenv("DLSR_CACHE_DIR", str(own_data["cache"]))
    app = open_page("pages/failure_cases.py")
    errors = app.dataframe[1].value
    id_rows = errors[errors["kind"] == "ID flagged as OOD"]
    assert len(id_rows) > 0 and set(id_rows["class"]) <= set(CLASSES)
    ood_rows = errors[errors["kind"] == "OOD accepted as ID"]
    assert set(ood_rows["nearest ID class"].dropna()) <= set(CLASSES)
    assert "each class of the ID set (id test)" in texts(app)


def test_unlabelled_id_data_gets_clusters_instead_of_classes(own_data, monkeypatch, tmp_path):
    from dlsr_core.data import Experiment, NamedSet, OODSet, save_experiment

    root = own_data["root"]
    run = tmp_path / "flat"
    run.mkdir()
    for file in own_data["run"].glob("*.safetensors*"):
        (run / file.name).write_bytes(file.read_bytes())
    flat = Experiment(  # the noise folder has no class subfolders: it stands in for unlabelled ID data
        training_set=f"folder:{root / 'id' / 'train'}",
        id_set=NamedSet(f"folder:{root / 'noise'}", "unlabelled"),
        ood_sets=(OODSet(f"folder:{root / 'gradients'}", "ramps", "far"),),
    )
    save_experiment(run / EXPERIMENT_NAME, flat)
    monkeypatch.setenv("DLSR_RUN_DIR", str(run))
    monkeypatch.setenv("DLSR_CACHE_DIR", str(own_data["cache"]))
    app = open_page("pages/failure_cases.py")
    assert "ID clusters (the ID set has no labels)" in texts(app)
    errors = app.dataframe[1].value
    named = set(errors["class"].dropna()) | set(errors["nearest ID class"].dropna())
    assert named and all(re.fullmatch(r"ID cluster \d", name) for name in named)


def test_a_set_added_by_name_is_extracted_in_the_background(own_data, monkeypatch, tmp_path):
    """The Experiment / data page adds a set, saves the experiment, and extracts its features off the page."""
    import time

    run = tmp_path / "editable"
    run.mkdir()
    for file in own_data["run"].iterdir():
        if file.is_file():
            (run / file.name).write_bytes(file.read_bytes())
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(30):
        Image.new("RGB", (32, 32), (i * 8, 0, 255 - i * 8)).save(extra / f"{i}.png")
    monkeypatch.setenv("DLSR_RUN_DIR", str(run))
    monkeypatch.setenv("DLSR_CACHE_DIR", str(tmp_path / "fresh-cache"))  # nothing cached: everything is extracted
    app = open_page("pages/experiment.py")
    next(t for t in app.text_input if t.label == "Dataset").set_value(f"folder:{extra}")
    next(t for t in app.text_input if t.label == "Display name (optional)").set_value("plain colours")
    next(b for b in app.button if b.label == "Add as OOD set").click().run()
    assert not app.exception
    assert "Added **plain colours**" in texts(app)
    assert load_experiment(run / EXPERIMENT_NAME).names[f"folder:{extra}"] == "plain colours"
    deadline = time.time() + 300
    while "extracting" in str(app.table[0].value) and time.time() < deadline:
        time.sleep(1.0)
        app.run()
    table = app.table[0].value
    assert list(table["features"])[-1] == "cached" and "plain colours" in list(table["name"])
    app.switch_page("pages/distributions.py").run()
    assert not app.exception and "plain colours (far)" in list(app.dataframe[0].value.index)
    Path(run / EXPERIMENT_NAME).write_text("{damaged")
    app.switch_page("pages/experiment.py").run()
    assert not app.exception and "The experiment file cannot be used" in texts(app)


def test_large_sets_are_used_through_stated_subsets(own_data, monkeypatch):
    """The subsets pages take of large sets, exercised on small ones by lowering the limits."""
    from dlsr_core.explorer import sets

    monkeypatch.setenv("DLSR_RUN_DIR", str(own_data["run"]))
    monkeypatch.setenv("DLSR_CACHE_DIR", str(own_data["cache"]))
    monkeypatch.setattr(sets, "REFERENCE_LIMIT", 40)
    monkeypatch.setattr(explorer, "ANALYSED_ROWS", 30)
    app = open_page(
        "pages/score_images.py", score_uploads=[("x.png", (own_data["root"] / "noise" / "1.png").read_bytes())]
    )
    title = app.get("plotly_chart")[0].proto.spec
    assert "a fixed random 40 of the 72 ID reference images (id test)" in title
    app = open_page("pages/failure_cases.py")
    stated = "id test 30 of 72, noise 30 of 40, ramps 30 of 40. Counts below, and the threshold, are of those images"
    assert "analysed on a fixed random 30 of their images" in texts(app) and stated in texts(app)
    assert app.metric[0].value.endswith("of 30") and app.metric[1].value.endswith("of 60")
