"""The analysis pages (Score distributions, Feature map, Failure cases, Train) driven headlessly with AppTest on
the shipped model and the demo sets, checked against numbers computed here directly from the core."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import shipped
from test_app_pages import open_page, texts

from dlsr_core import embedding, explorer
from dlsr_core.data import EXPERIMENT_NAME, FASHION_MNIST_CLASSES, load_experiment
from dlsr_core.metrics import ood_metrics
from dlsr_core.scoring import Detector


def by_label(elements, label: str):
    return next(e for e in elements if e.label == label)


@pytest.fixture(scope="module")
def demo_features(detector):
    return {spec: explorer.load_features(detector, spec) for spec in [shipped.ID_SET, *shipped.OOD_SETS]}


def test_distributions_wide_table_equals_the_core_and_the_figures_render(detector, demo_features):
    app = open_page("pages/distributions.py")
    table = app.dataframe[0].value
    assert list(table.columns.get_level_values(0).unique()) == ["MSE", "MFsim", "LR", "k-NN", "Mahalanobis"]
    mfsim = {spec: detector.score_features(f.features, 5).mfsim for spec, f in demo_features.items()}
    aurocs = {}
    for spec, group in shipped.OOD_SETS.items():
        aurocs[spec] = 100 * ood_metrics(mfsim[shipped.ID_SET], mfsim[spec]).auroc
        row = f"{spec.removeprefix('demo:')} ({group})"
        assert table.loc[row, ("MFsim", "AUROC")] == pytest.approx(aurocs[spec], abs=0.006)
    far = [aurocs[s] for s, g in shipped.OOD_SETS.items() if g == "far"]
    assert table.loc["average far", ("MFsim", "AUROC")] == pytest.approx(np.mean(far), abs=0.006)
    assert "k-NN, Mahalanobis:" in texts(app) and "model default@" in texts(app)
    assert "with ID as the positive class" in texts(app)  # the FPR95 convention under the table

    # The paper's Figure 3: the first-epoch model beside the final one, on the same images.
    app.radio(key="distributions_view").set_value("First vs last epoch (paper Fig. 3)").run()
    assert not app.exception
    early = Detector(detector.early)
    pooled = np.concatenate([mfsim[s] for s in shipped.OOD_SETS])
    early_mfsim = {spec: early.score_features(f.features, 5).mfsim for spec, f in demo_features.items()}
    early_id = early_mfsim.pop(shipped.ID_SET)
    early_ood = np.concatenate(list(early_mfsim.values()))
    before = 100 * ood_metrics(early_id, early_ood).auroc
    after = 100 * ood_metrics(mfsim[shipped.ID_SET], pooled).auroc
    assert f"AUROC {before:.1f} % → {after:.1f} %" in texts(app)
    assert f"From epoch {detector.early.info.epoch} to epoch {detector.info.epoch}" in texts(app)
    assert len(app.get("plotly_chart")) == 2

    # The paper's Figure 4 with its sentence of interpretation.
    app.radio(key="distributions_view").set_value("Timestep sweep (paper Fig. 4)").run()
    by_label(app.multiselect, "Timesteps").set_value([2, 5])
    by_label(app.number_input, "Images per set").set_value(100)
    next(b for b in app.button if b.label == "Run sweep").click().run()
    assert not app.exception
    assert "100 images per set" in texts(app) and "Averaged over the OOD sets, MFsim AUROC" in texts(app)


def test_distributions_costly_settings_score_a_stated_subset(detector):
    app = open_page("pages/distributions.py")
    by_label(app.multiselect, "Methods in the table and histograms").set_value(["mfsim"]).run()
    started = time.perf_counter()
    app.slider(key="steps").set_value(5).run()
    print(f"\nsteps 1 -> 5 on Score distributions (MFsim only): {time.perf_counter() - started:.2f} s")
    assert not app.exception
    assert "use a fixed random 1,996 of the 7,000 images" in texts(app)
    table = app.dataframe[0].value
    assert list(table.columns.get_level_values(0).unique()) == ["MFsim"]
    assert any(b.label == "Score all images at this setting" for b in app.button)


def test_distributions_adds_a_comparison_method_to_the_table_and_histograms(detector, demo_features):
    app = open_page("pages/distributions.py")
    assert not any(m.label == "Add methods from the paper's comparison" for m in app.multiselect)  # not loaded yet
    app.toggle(key="distributions_compare").set_value(True).run()
    adder = by_label(app.multiselect, "Add methods from the paper's comparison")
    assert {"Pixel DDPM", "Feature AE", "MSP", "EBO (energy)", "ViM"} <= set(adder.options)
    by_label(app.multiselect, "Methods in the table and histograms").set_value(["mfsim"])
    adder.set_value(["feature_ae"]).run()
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table.columns.get_level_values(0).unique()) == ["MFsim", "Feature AE"]
    direct = explorer.compare_methods(detector, ["feature_ae"], shipped.ID_SET, demo_features)
    for spec, group in shipped.OOD_SETS.items():
        expected = 100 * direct.metric("feature_ae", spec).auroc
        assert table.loc[f"{spec.removeprefix('demo:')} ({group})", ("Feature AE", "AUROC")] == pytest.approx(
            expected, abs=0.006
        )
    assert "images/s from its cached input" not in texts(app)  # not comparable across methods: see the speed table
    by_label(app.selectbox, "Histogram method").set_value("feature_ae").run()
    assert not app.exception and "Feature AE score (higher = more OOD)" in str(app.get("plotly_chart")[0].proto)


def test_feature_map_shows_the_shipped_umap_at_once_and_refits_only_when_positions_change(monkeypatch):
    monkeypatch.setattr(embedding, "worker_process_executor", lambda: ThreadPoolExecutor(1))
    monkeypatch.setattr(embedding, "_warm_up", lambda: True)
    submitted = []
    original_submit = embedding.BackgroundProjector.submit
    monkeypatch.setattr(
        embedding.BackgroundProjector,
        "submit",
        lambda self, key, features: submitted.append(key) or original_submit(self, key, features),
    )
    app = open_page("pages/feature_map.py")
    assert "UMAP of 2400 points" in texts(app) and submitted == []  # the shipped projection, no fit
    app.selectbox(key="score").set_value("mse").run()
    app.radio[1].set_value("score rank").run()
    assert "UMAP of 2400 points" in texts(app) and "MSE rank" in texts(app) and submitted == []
    assert "inside the ID cluster" in str(app.dataframe[0].value.columns.tolist())

    app.slider(key="timestep").set_value(6).run()  # reconstructions move: a new projection, PCA meanwhile
    assert not app.exception and len(submitted) == 1
    assert "PCA of 2400 points" in texts(app) and "being computed in the background" in texts(app)
    deadline = time.time() + 180
    while "UMAP of 2400 points" not in texts(app) and time.time() < deadline:
        time.sleep(0.5)
        app.run()
    assert "UMAP of 2400 points" in texts(app)
    app.selectbox(key="score").set_value("mfsim").run()  # same positions: nothing new is fitted
    assert len(submitted) == 2 and submitted[1] == submitted[0]  # re-asked under the same key, computed once

    app.checkbox[0].uncheck().run()  # originals only: t no longer moves any point
    keys_without_reconstructions = set(submitted[2:])
    app.slider(key="timestep").set_value(7).run()
    assert set(submitted[2:]) == keys_without_reconstructions and len(keys_without_reconstructions) == 1


def test_failure_cases_count_the_true_errors_and_name_classes(detector, demo_features):
    app = open_page("pages/failure_cases.py")
    mfsim = {spec: detector.score_features(f.features, 5).mfsim for spec, f in demo_features.items()}
    threshold = explorer.id_threshold95(mfsim[shipped.ID_SET])
    id_errors = int((mfsim[shipped.ID_SET] > threshold).sum())
    ood_errors = sum(int((mfsim[s] <= threshold).sum()) for s in shipped.OOD_SETS)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["ID images flagged as OOD"] == f"{id_errors} of 2000"
    assert metrics["OOD images accepted as ID"] == f"{ood_errors} of 5000"
    pages = -(-id_errors // 12)
    assert f"ID flagged as OOD: {id_errors}" in texts(app) and f"page 1 of {pages}: 1–12 of {id_errors}" in texts(app)
    categories = app.table[0].value
    assert {"little semantic content", "resembles an ID class", "shares ID intensity statistics"} <= set(
        categories["category"]
    )
    errors = app.dataframe[1].value
    assert len(errors) == id_errors + ood_errors
    id_rows = errors[errors["kind"] == "ID flagged as OOD"]
    assert set(id_rows["class"]) <= set(FASHION_MNIST_CLASSES) and id_rows["nearest ID class"].isna().all()
    assert set(errors[errors["kind"] == "OOD accepted as ID"]["nearest ID class"]) <= set(FASHION_MNIST_CLASSES)


def _tiny_training(app, dataset: str, run_name: str, epochs: int = 2, width: int = 32, batch_size: int = 256):
    app.selectbox[0].set_value(dataset)
    inputs = {n.label: n for n in app.number_input}
    inputs["LFDN width"].set_value(width)
    inputs["LFDN depth (blocks)"].set_value(1)
    inputs["Epochs"].set_value(epochs)
    inputs["Batch size"].set_value(batch_size)
    by_label(app.text_input, "Run name").set_value(run_name)


def _start(app):
    next(b for b in app.button if b.label == "Start training").click().run()
    assert not app.exception
    return app.session_state["train_job"]


def test_train_page_trains_a_selectable_model(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSR_CHECKPOINTS_DIR", str(tmp_path))
    app = open_page("pages/train.py")
    assert app.selectbox[0].value == explorer.default_training_set(shipped.EXPERIMENT)
    _tiny_training(app, "demo:fashion_mnist_rotated", "from_test")
    job = _start(app)
    job.join(timeout=180)
    assert job.snapshot().phase == "finished", job.snapshot().message
    app.run()
    assert "is now selectable" in texts(app)
    assert tmp_path / "from_test" in explorer.list_run_dirs()
    # The run carries its experiment: no test split of the demo set, so it is evaluated on it (and flagged), against
    # the loaded model's OOD sets except itself.
    written = load_experiment(tmp_path / "from_test" / EXPERIMENT_NAME)
    assert written.training_set == written.id_set.spec == "demo:fashion_mnist_rotated"
    assert list(written.groups) == [s for s in shipped.OOD_SETS if s != "demo:fashion_mnist_rotated"]
    assert len(app.session_state["train_job"].snapshot().losses) == 2 * 4  # 1000 images / batch 256 = 4 steps


def test_train_page_warns_about_the_evaluation_set_and_speaks_gui_not_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSR_CHECKPOINTS_DIR", str(tmp_path))
    app = open_page("pages/train.py")
    _tiny_training(app, shipped.ID_SET, "same_name", epochs=1)
    job = _start(app)
    assert f"The ID evaluation set {shipped.ID_SET} is the training set" in app.warning[0].value
    job.join(timeout=180)
    app.run()
    _tiny_training(app, "demo:fashion_mnist_rotated", "same_name", epochs=1, width=48)
    job = _start(app)
    job.join(timeout=180)
    app.run()
    assert job.snapshot().phase == "failed"
    assert "tick **Start over**" in app.error[0].value and "--" not in app.error[0].value
    by_label(app.checkbox, "Start over").check()
    job = _start(app)
    job.join(timeout=180)
    assert job.snapshot().phase == "finished", job.snapshot().message


def test_train_page_stop_button_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSR_CHECKPOINTS_DIR", str(tmp_path))
    app = open_page("pages/train.py")
    _tiny_training(app, "demo:fashion_mnist_rotated", "stopped", epochs=500, batch_size=96)
    job = _start(app)
    deadline = time.time() + 120
    while not job.snapshot().epoch_losses and time.time() < deadline:
        time.sleep(0.2)
    app.run()
    next(b for b in app.button if b.label == "Stop training").click().run()
    assert not app.exception
    job.join(timeout=60)
    state = job.snapshot()
    assert state.phase == "stopped" and state.epoch < 500, state.message
    saved = Detector.load(tmp_path / "stopped", device="cpu").info.epoch
    assert 1 <= saved <= len(state.epoch_losses)
    app.run()
    assert "is now selectable" in texts(app)
