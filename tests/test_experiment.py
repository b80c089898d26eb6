"""Experiments (dlsr_core.data.experiment, experiment_defaults): the file format round trip, every way a file can be
damaged, the defaults `train` writes, the training/evaluation overlap check, and how a run's experiment is found."""

import json
from pathlib import Path

import pytest
import shipped

from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.data import (
    EXPERIMENT_NAME,
    Experiment,
    ExperimentError,
    NamedSet,
    OODSet,
    default_id_set,
    default_name,
    edits_path,
    load_experiment,
    overlap_warning,
    run_experiment,
    save_experiment,
)
from dlsr_core.data.experiment import experiment_from_dict, experiment_to_dict
from dlsr_core.explorer import describe_set, templates

REPO = Path(__file__).resolve().parents[1]


def _experiment(**changes) -> Experiment:
    values = dict(
        training_set="letters",
        id_set=NamedSet("letters+invert", "inverted letters"),
        ood_sets=(OODSet("digits", "digits", "far"), OODSet("letters+rot90", "rotated", "near", "a note")),
        class_names=("A", "B"),
        title="a test",
    )
    return Experiment(**{**values, **changes})


def test_round_trip_and_the_documented_format(tmp_path):
    experiment = _experiment()
    save_experiment(tmp_path / "e.json", experiment)
    document = json.loads((tmp_path / "e.json").read_text())
    assert list(document) == ["format", "format_version", "title", "training_set", "id_set", "ood_sets", "class_names"]
    assert document["format"] == "dlsr-experiment" and document["format_version"] == 1
    assert document["ood_sets"][0] == {"spec": "digits", "name": "digits", "group": "far"}  # empty note left out
    assert document["ood_sets"][1]["note"] == "a note"
    assert load_experiment(tmp_path / "e.json") == experiment
    assert experiment.names == {"letters+invert": "inverted letters", "digits": "digits", "letters+rot90": "rotated"}
    assert experiment.groups == {"digits": "far", "letters+rot90": "near"}
    assert experiment.key != _experiment(title="other").key


def test_the_shipped_model_carries_todays_demo_sets():
    experiment = load_experiment(DEFAULT_RUN_DIR / EXPERIMENT_NAME)
    assert experiment.training_set == "fashion_mnist:train"
    assert experiment.id_set == NamedSet("demo:fashion_mnist_test", "fashion_mnist_test")
    assert experiment.groups == {
        "demo:digits": "far",
        "demo:letters": "far",
        "demo:textures": "far",
        "demo:fashion_mnist_inverted": "near",
        "demo:fashion_mnist_rotated": "near",
    }
    assert experiment.names["demo:digits"] == "digits" and len(experiment.class_names) == 10
    assert overlap_warning(experiment) is None


def test_relative_folders_are_read_from_the_data_root_and_written_back_relative(tmp_path):
    root = tmp_path / "data"
    document = experiment_to_dict(_experiment(ood_sets=(OODSet("folder:sets/cats+rot90", "cats"),)))
    experiment = experiment_from_dict(document, root)
    assert experiment.ood_sets[0].spec == f"folder:{root / 'sets' / 'cats'}+rot90"
    assert experiment_to_dict(experiment, root)["ood_sets"][0]["spec"] == "folder:sets/cats+rot90"
    elsewhere = experiment_from_dict(document, tmp_path / "other")
    assert experiment_to_dict(elsewhere, root)["ood_sets"][0]["spec"].startswith(f"folder:{tmp_path / 'other'}")


def _write(tmp_path, text: str | bytes) -> Path:
    path = tmp_path / EXPERIMENT_NAME
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _document(**changes) -> str:
    document = experiment_to_dict(_experiment())
    document.update(changes)
    return json.dumps(document)


@pytest.mark.parametrize(
    "content, says",
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not a UTF-8 text file"),
        ("[]", "must be a JSON object"),
        (_document(format="something-else"), "not an experiment file"),
        (_document(format_version=2), "format_version 2"),
        (_document(format_version=True), "format_version True"),
        (_document(extra=1), "unknown key(s) 'extra'"),
        (_document(training_set=7), "experiment.training_set must be a string"),
        (_document(id_set={"spec": "digits"}), "lacks the required key 'name'"),
        (_document(ood_sets=[{"spec": "digits", "name": "d", "group": "middle"}]), "must be one of ['far', 'near']"),
        (_document(ood_sets=[{"spec": "digits", "name": "d"}, {"spec": "digits", "name": "e"}]), "listed more than"),
        (_document(ood_sets=[{"spec": "digits", "name": "D"}, {"spec": "textures", "name": "d"}]), "own name"),
        (_document(ood_sets=[{"spec": "letters+invert", "name": "x"}]), "own dataset"),
        (_document(ood_sets=[{"spec": "digits", "name": " padded "}]), "without leading/trailing spaces"),
        (_document(ood_sets=[{"spec": "digits\nrm", "name": "d"}]), "on one line"),
        (_document(class_names=[]), "class_names must hold"),
        ("{" + " " * 1_000_001 + "}", "too large"),
    ],
)
def test_a_damaged_file_is_a_clear_error_naming_it(tmp_path, content, says):
    path = _write(tmp_path, content)
    with pytest.raises(ExperimentError) as error:
        load_experiment(path)
    assert str(path) in str(error.value) and says in str(error.value)


def test_unknown_datasets_load_and_are_reported_where_they_are_used(tmp_path):
    path = _write(tmp_path, _document(ood_sets=[{"spec": "no_such_source:x", "name": "odd", "group": "far"}]))
    experiment = load_experiment(path)
    assert experiment.ood_sets[0].spec == "no_such_source:x"  # kept as written
    info = describe_set("no_such_source:x")
    assert info.images is None and "unknown dataset spec" in info.problem
    missing = describe_set(f"folder:{tmp_path / 'absent'}")
    assert "is not a directory" in missing.problem


def test_edits_are_validated():
    experiment = _experiment()
    added = experiment.with_ood_set(OODSet("textures", "textures", "near"))
    assert added.groups["textures"] == "near" and experiment.groups.get("textures") is None
    retagged = added.with_ood_set(OODSet("digits", "digits", "near"))
    assert list(retagged.groups) == ["digits", "letters+rot90", "textures"] and retagged.groups["digits"] == "near"
    assert "digits" not in added.without_ood_set("digits").groups
    with pytest.raises(ExperimentError, match="is the ID evaluation set"):
        experiment.with_ood_set(OODSet("letters+invert", "again"))
    with pytest.raises(ExperimentError, match="remove it there first"):
        experiment.with_id_set(NamedSet("digits", "digits as ID"))
    with pytest.raises(KeyError):
        experiment.without_ood_set("textures")
    with pytest.raises(ExperimentError, match="at most 32"):
        Experiment(
            "letters",
            NamedSet("digits", "d"),
            tuple(OODSet(f"letters+rot90+{'+'.join(['hflip'] * i)}", f"s{i}") for i in range(1, 34)),
        )


def test_default_id_set_is_the_training_sets_test_split_where_one_exists(tmp_path):
    assert default_id_set("fashion_mnist:train")[0] == "fashion_mnist:test"
    assert default_id_set("fashion_mnist:train+invert")[0] == "fashion_mnist:test+invert"
    assert default_id_set("torchvision:CIFAR10:train")[0] == "torchvision:CIFAR10:test"
    assert default_id_set("torchvision:Omniglot:background")[0] == "torchvision:Omniglot:evaluation"
    for layout, expected in (("train", "test"), ("Training", "val")):
        (tmp_path / layout / "x" / "cat").mkdir(parents=True)
        (tmp_path / layout / "x" / expected / "cat").mkdir(parents=True)
        spec, how = default_id_set(f"folder:{tmp_path / layout / 'x' / layout}")
        assert spec == f"folder:{tmp_path / layout / 'x' / expected}" and expected in how
    (tmp_path / "photos").mkdir()
    spec, how = default_id_set(f"folder:{tmp_path / 'photos'}")
    assert spec == f"folder:{tmp_path / 'photos'}" and "the training set itself" in how
    assert default_id_set("letters") == ("letters", default_id_set("letters")[1])


def test_default_names():
    assert default_name("torchvision:SVHN:test") == "SVHN"
    assert default_name("torchvision:SVHN:train") == "SVHN train"
    assert default_name("folder:/data/dtd/images") == "dtd images"
    assert default_name("folder:/data/cats") == "cats"
    assert default_name("demo:letters+rot90") == "letters +rot90"
    assert default_name("fashion_mnist:test") == "fashion_mnist test"
    assert len(default_name("folder:/" + "x" * 80)) == 40


@pytest.mark.parametrize(
    "training, evaluated, overlaps",
    [
        ("letters", "letters", "is the training set"),
        ("letters", "letters+invert", "shows the training images (shifted)"),
        ("fashion_mnist:test", "demo:fashion_mnist_test", "is drawn from the training set"),
        ("demo:fashion_mnist_rotated", "fashion_mnist:test", "contains the training images"),
        ("folder:/data/pets", "folder:/data/pets/test", "shares image folders"),
        ("folder:/data/pets/train", "folder:/data/pets/test", None),
        ("fashion_mnist:train", "demo:fashion_mnist_test", None),
        ("fashion_mnist:train", "fashion_mnist:test", None),
    ],
)
def test_overlap_between_training_and_evaluation_images(training, evaluated, overlaps):
    warning = overlap_warning(Experiment(training, NamedSet(evaluated, "id")))
    assert (warning is None) if overlaps is None else (overlaps in warning)


def _run(tmp_path, name="run") -> Path:
    run = tmp_path / name
    run.mkdir()
    return run


def test_a_runs_file_is_used_and_a_run_without_one_gets_a_stated_fallback(tmp_path):
    run = _run(tmp_path)
    found = run_experiment(run, "letters")
    assert found.source == "fallback" and found.path is None and found.edits_path == run / EXPERIMENT_NAME
    assert found.experiment.id_set.spec == "letters" and found.experiment.ood_sets == ()
    assert "no experiment.json" in found.note and "the training set itself" in found.note
    assert "is the training set" in found.overlap
    save_experiment(run / EXPERIMENT_NAME, _experiment())
    found = run_experiment(run, "letters")
    assert found.source == "file" and found.experiment == _experiment() and found.note == ""


def test_an_old_run_trained_like_the_shipped_model_gets_its_sets(tmp_path):
    found = run_experiment(_run(tmp_path), "fashion_mnist:train", shipped_run=DEFAULT_RUN_DIR)
    assert found.source == "fallback" and found.experiment == shipped.EXPERIMENT
    assert "like the shipped model" in found.note
    other = run_experiment(_run(tmp_path, "b"), "torchvision:CIFAR10:train", shipped_run=DEFAULT_RUN_DIR)
    assert other.experiment.id_set.spec == "torchvision:CIFAR10:test" and other.experiment.ood_sets == ()


def test_a_damaged_file_falls_back_and_is_named(tmp_path):
    run = _run(tmp_path)
    (run / EXPERIMENT_NAME).write_text("{broken")
    found = run_experiment(run, "letters")
    assert found.source == "fallback" and len(found.problems) == 1 and str(run / EXPERIMENT_NAME) in found.problems[0]
    assert "cannot be used" in found.note


def test_edits_of_the_shipped_model_go_to_the_user_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSR_DATA_DIR", str(tmp_path / "data"))
    target = edits_path(DEFAULT_RUN_DIR)
    assert target.parent == tmp_path / "data" / "experiments" and REPO not in target.parents
    save_experiment(target, _experiment(training_set="fashion_mnist:train"))
    found = run_experiment(DEFAULT_RUN_DIR, "fashion_mnist:train")
    assert found.source == "user copy" and found.experiment.id_set.name == "inverted letters"
    assert "unchanged" in found.note
    target.unlink()
    assert run_experiment(DEFAULT_RUN_DIR, "fashion_mnist:train").source == "file"


def test_the_paper_templates_load_and_name_their_sets(tmp_path):
    found = templates()
    assert len(found) == 2
    cifar10 = load_experiment(REPO / "experiments" / "cifar10_paper.json", tmp_path)
    assert cifar10.training_set == "torchvision:CIFAR10:train" and cifar10.id_set.spec == "torchvision:CIFAR10:test"
    assert [s.name for s in cifar10.ood_sets] == [
        "SVHN", "MNIST", "FMNIST", "KMNIST", "Omniglot", "LSUN-c", "LSUN-r", "iSUN", "Textures", "Places365",
        "NotMNIST", "CIFAR-100",
    ]  # fmt: skip
    assert cifar10.ood_set(f"folder:{tmp_path / 'LSUN'}").note.startswith("manual download")
    assert cifar10.groups["torchvision:CIFAR100:test"] == "near"
    cifar100 = load_experiment(REPO / "experiments" / "cifar100_paper.json", tmp_path)
    assert [s.name for s in cifar100.ood_sets] == [
        "SVHN", "LSUN-c", "LSUN-r", "iSUN", "Textures", "Places365", "CIFAR-10",
    ]  # fmt: skip
