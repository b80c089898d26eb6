"""The explorer's side of experiments: background extraction jobs, the set table, baselines matched to the training
set, templates, and the experiment a run trained on the Train page gets."""

import threading
import time
from types import SimpleNamespace

import pytest
import shipped

from dlsr_core import explorer
from dlsr_core.baselines.store import TrainingRecord
from dlsr_core.data import Experiment, NamedSet, OODSet, StoredSet
from dlsr_core.validation import FIT_RULE, TrainingData


def test_feature_jobs_run_one_at_a_time_report_progress_and_keep_errors():
    jobs = explorer.FeatureJobs()
    gate, running = threading.Event(), []

    def slow(progress):
        running.append("slow")
        progress(3, 10)
        gate.wait(10)
        progress(10, 10)
        return "features"

    def failing(progress):
        running.append("failing")
        raise OSError("disk full")

    jobs.submit("a", slow)
    jobs.submit("b", failing)
    jobs.submit("a", failing)  # already queued under this key: ignored
    deadline = time.time() + 10
    while (jobs.status("a").state != "running" or jobs.status("a").done != 3) and time.time() < deadline:
        time.sleep(0.01)
    assert jobs.status("a").fraction == pytest.approx(0.3)
    assert jobs.status("b").state == "queued" and running == ["slow"]  # the second waits for the first
    gate.set()
    assert jobs.wait("b", 10).state == "failed" and "OSError: disk full" in jobs.status("b").error
    assert jobs.status("a").state == "done" and jobs.result("a") == "features" and jobs.status("a").finished
    jobs.forget("a")
    assert jobs.status("a") is None and jobs.status("never") is None


def test_the_set_table_says_what_each_set_holds(tmp_path):
    experiment = shipped.EXPERIMENT
    infos = {spec: explorer.describe_set(spec) for spec in experiment.specs}
    training = experiment.training_set
    infos[training] = explorer.SetInfo(training, problem="not installed")
    rows = explorer.set_rows(experiment, infos, {"demo:digits": "cached"})
    assert [row["role"] for row in rows] == ["training", "ID evaluation", *["OOD (far)"] * 3, *["OOD (near)"] * 2]
    assert rows[0]["features"] == "unavailable: not installed"
    assert rows[1]["images"] == 2000 and rows[1]["classes"].startswith("10: T-shirt/top, Trouser")
    assert rows[2] == {
        "role": "OOD (far)",
        "name": "digits",
        "dataset": "demo:digits",
        "images": 1000,
        "classes": "10: 0, 1, 2, 3, 4, 5 …",
        "features": "cached",
    }
    noted = Experiment("digits", NamedSet("letters", "l"), (OODSet(f"folder:{tmp_path}/x", "x", "far", "get it"),))
    row = explorer.set_rows(noted, {f"folder:{tmp_path}/x": explorer.describe_set(f"folder:{tmp_path}/x")}, {})[-1]
    assert row["features"].startswith("unavailable:") and row["features"].endswith("— get it")


def _record(dataset: str, subset: str | None = None) -> TrainingRecord:
    return TrainingRecord(training_set=TrainingData(dataset, subset) if dataset else None)


def _baselines(**datasets):
    models = {kind: SimpleNamespace(info=_record(value)) for kind, value in datasets.items()}
    return SimpleNamespace(classifier=models.get("classifier"), pixel_ddpm=models.get("pixel_ddpm"),
                           feature_ae=models.get("feature_ae"))  # fmt: skip


def test_comparison_baselines_are_offered_only_when_trained_on_the_experiments_training_set():
    baselines = _baselines(pixel_ddpm="fashion_mnist:train", feature_ae="letters", classifier=None)
    offered, left_out = explorer.baselines_for_experiment(["pixel_ddpm", "feature_ae"], baselines, "letters")
    assert offered == ["feature_ae"] and left_out == {"pixel_ddpm": "trained on another training set"}
    baselines = _baselines(classifier="letters", pixel_ddpm="")
    offered, left_out = explorer.baselines_for_experiment(["msp", "vim", "pixel_ddpm"], baselines, "letters")
    assert offered == ["msp", "vim"] and left_out == {"pixel_ddpm": "records no training set"}
    assert explorer.baseline_training_set(_record("x")) == TrainingData("x")
    assert explorer.baseline_training_set(_record("")) is None and explorer.baseline_training_set({}) is None
    # One check (dlsr_core.validation.training_data_matches): a baseline fitted on the fit set of a model's
    # training set belongs to it (every class kept); one fitted on some classes of it does not.
    fit = SimpleNamespace(classifier=SimpleNamespace(info=_record("fashion_mnist:train", FIT_RULE)))
    assert explorer.baselines_for_experiment(["msp"], fit, "fashion_mnist:train") == (["msp"], {})
    some_classes = SimpleNamespace(classifier=SimpleNamespace(info=_record("fashion_mnist:train", "classes 0-5")))
    offered, left_out = explorer.baselines_for_experiment(["msp"], some_classes, "fashion_mnist:train")
    assert offered == [] and left_out == {"msp": "trained on another training set"}


def test_a_template_keeps_the_models_training_set_and_warns_when_it_differs():
    path = explorer.templates()["CIFAR-10 as ID: the paper's Tables 1 and 3"]
    mine = Experiment("torchvision:CIFAR10:train", NamedSet("torchvision:CIFAR10:test", "c"))
    sets, warning = explorer.from_template(mine, path)
    assert warning is None and sets.training_set == "torchvision:CIFAR10:train" and len(sets.ood_sets) == 12
    sets, warning = explorer.from_template(shipped.EXPERIMENT, path)
    assert sets.training_set == shipped.EXPERIMENT.training_set and "may not be this model's in-distribution" in warning


def test_a_run_trained_on_the_train_page_gets_its_evaluation_sets():
    loaded = shipped.EXPERIMENT
    own = explorer.evaluation_sets("digits", loaded, "", ("demo:letters", "demo:digits"))
    assert own.id_set == NamedSet("digits", "digits (ID)") and list(own.groups) == ["demo:digits", "demo:letters"]
    named = explorer.evaluation_sets("fashion_mnist:train", loaded, "  demo:fashion_mnist_test ")
    assert named.id_set == loaded.id_set and named.class_names == loaded.class_names and named.groups == loaded.groups
    fresh = explorer.evaluation_sets("demo:digits", None)
    assert fresh.id_set.spec == "demo:digits" and fresh.ood_sets == () and fresh.class_names[:2] == ("0", "1")
    without_itself = explorer.evaluation_sets("demo:letters", loaded)
    assert "demo:letters" not in without_itself.groups  # a set is never OOD to the model trained on it


def test_an_uploads_summary_names_what_was_left_out(tmp_path):
    stored = StoredSet(tmp_path / "pets", 12, ("cat", "dog"), tuple((f"f{i}.txt", "not an image") for i in range(7)))
    text = explorer.upload_summary(stored, " pets ")
    assert text.startswith("Stored **pets**: 12 images in 2 classes (cat, dog); 7 file(s) skipped (f0.txt: not an")
    assert "f4.txt" in text and "f5.txt" not in text and "…" in text and str(tmp_path / "pets") in text
