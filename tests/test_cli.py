import json

import pytest
import torch

from dlsr_core.cli import main
from dlsr_core.scoring import Detector

FAST = ["--weights", "random", "--input-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cache = str(root / "cache")
    run = root / "run"
    code = main(
        [
            "train",
            "-d",
            "demo:fashion_mnist_rotated",
            "--out",
            str(run),
            "--width",
            "32",
            "--depth",
            "1",
            "--epochs",
            "2",
            "--train-batch-size",
            "128",
            "--cache-dir",
            cache,
            *FAST,
        ]
    )
    assert code == 0
    return root, cache, run


def test_train_writes_loadable_run(workspace):
    _, _, run = workspace
    detector = Detector.load(run)
    assert detector.backbone == "efficientnet_lite0" and detector.input_size == 32
    assert detector.info.weights == "random" and detector.info.epoch == 2 and detector.has_early
    assert detector.stage_dims == (16, 24, 40, 112, 320)


def test_evaluate_prints_table_and_writes_json_csv(workspace, capsys):
    root, cache, run = workspace
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(run),
            "--id",
            "demo:fashion_mnist_rotated",
            "--ood",
            "demo:letters",
            "--train",
            "demo:fashion_mnist_rotated",
            "--knn-k",
            "5",
            "--json",
            str(root / "r.json"),
            "--csv",
            str(root / "r.csv"),
            "--cache-dir",
            cache,
            "--quiet",
            "-t",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "demo:letters" in out and "average" in out and "AUROC / FPR95" in out
    assert "with ID as the positive class" in out  # the FPR95 convention under the table
    report = json.loads((root / "r.json").read_text())
    scores = {row["score"] for row in report["rows"]}
    assert scores == {"mse", "mfsim", "lr", "knn", "mahalanobis"}
    assert report["settings"]["timestep"] == 3
    assert (root / "r.csv").read_text().count("\n") == 1 + 5


def test_score_dataset_writes_csv(workspace, tmp_path):
    _, cache, run = workspace
    out = tmp_path / "scores.csv"
    code = main(
        [
            "score",
            "--checkpoint",
            str(run),
            "-d",
            "demo:letters",
            "-o",
            str(out),
            "--cache-dir",
            cache,
            "--quiet",
            "--seed",
            "4",
        ]
    )
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0].split(",")[:4] == ["item", "mse", "mfsim", "lr"] and len(lines) == 1 + 1000


def test_score_image_files_skips_bad_ones(workspace, tmp_path, capsys):
    from PIL import Image

    _, _, run = workspace
    good = tmp_path / "good.png"
    Image.new("L", (20, 20), 128).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    code = main(["score", "--checkpoint", str(run), "--images", str(good), str(bad)])
    captured = capsys.readouterr()
    assert code == 0
    assert "skipped" in captured.err and "bad.png" in captured.err
    assert len(captured.out.strip().splitlines()) == 2


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["extract", "-d", "nonsense:thing", *FAST], "error: "),
        (["evaluate", "--checkpoint", "/nonexistent/run", "--id", "digits", "--ood", "letters"], "no checkpoint"),
        (["score", "--checkpoint", "/nonexistent/run", "-d", "digits", "-t", "0"], "error: "),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1


def test_timestep_out_of_range_is_a_clean_error(workspace, capsys):
    _, cache, run = workspace
    assert (
        main(["score", "--checkpoint", str(run), "-d", "demo:letters", "-t", "500", "--cache-dir", cache, "--quiet"])
        == 2
    )
    assert "1..100" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("extract", "train", "score", "evaluate"))


def test_same_seed_same_scores(workspace, tmp_path):
    _, cache, run = workspace
    outputs = []
    for name in ("a", "b"):
        main(
            [
                "score",
                "--checkpoint",
                str(run),
                "-d",
                "demo:letters",
                "-o",
                str(tmp_path / name),
                "--cache-dir",
                cache,
                "--quiet",
                "--seed",
                "9",
            ]
        )
        outputs.append((tmp_path / name).read_text())
    assert outputs[0] == outputs[1]
    torch.manual_seed(0)
