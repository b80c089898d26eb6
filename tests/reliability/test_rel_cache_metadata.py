"""Damaged feature-cache metadata: an entry damaged in any field is ignored with one warning and recomputed.

The damage is crafted the way a bad edit or a foreign tool would leave it: the tensor checksum is recomputed so it
still matches, and (in the "consistent" cases) so is the metadata digest, so only the field checks can catch it.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import BACKBONE, FEATURE_OPTIONS, ID_SET, STAGES, TINY, TRAIN_SET, WEIGHTS, FakeExtractor, assert_loads

from dlsr_core import cache
from dlsr_core.checkpoint import FIRST_NAME, LAST_NAME, load_checkpoint

DIGEST = "entry_sha256"  # the cache's digest of its metadata and tensor shapes


def _entry(folder, spec):
    readable = spec.replace(":", "_")
    (path,) = folder.glob(f"{readable}-{BACKBONE}-*.safetensors")
    return path


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}


def _rewrite(path, change_metadata=None, change_tensors=None, digest="recompute"):
    """Apply the damage and recompute the tensor checksum; then recompute the metadata digest ("recompute"), leave
    the one stored before the edit ("keep") or drop it, as an entry written before the digest existed ("drop")."""
    tensors = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    if change_tensors:
        tensors = change_tensors(tensors)
    if change_metadata:
        change_metadata(metadata)
    payload = b"".join(tensors[name].contiguous().numpy().tobytes() for name in sorted(tensors))
    metadata["checksum"] = hashlib.sha256(payload).hexdigest()
    if digest == "recompute":
        fields = {name: value for name, value in metadata.items() if name != DIGEST}
        described = {name: [_DTYPES[tensor.dtype], list(tensor.shape)] for name, tensor in tensors.items()}
        text = json.dumps({"metadata": fields, "tensors": described}, sort_keys=True)
        metadata[DIGEST] = hashlib.sha256(text.encode()).hexdigest()
    elif digest == "drop":
        metadata.pop(DIGEST, None)
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))


def field(name, value):
    def change(metadata):
        if value is None:
            metadata.pop(name, None)
        else:
            metadata[name] = value

    return {"change_metadata": change}


def tensors(change):
    return {"change_tensors": change}


def _first_rows(count):
    return lambda t: {"features": t["features"][:count].clone(), "indices": t["indices"][:count].clone()}


CORPUS = {
    "stage-dims-1e400": field("stage_dims", "[1e400]"),
    "stage-dims-negative": field("stage_dims", "[-16, 48, 40, 112, 328]"),
    "stage-dims-permuted": field("stage_dims", "[320, 112, 40, 24, 16]"),
    "stage-dims-resplit": field("stage_dims", "[8, 32, 40, 112, 320]"),
    "stage-dims-off-by-one": field("stage_dims", "[16, 24, 40, 113, 320]"),
    "stage-dims-huge-integer": field("stage_dims", "[" + "9" * 5000 + "]"),
    "stage-dims-floats": field("stage_dims", "[16.0, 24.0, 40.0, 112.0, 320.0]"),
    "stage-dims-bools": field("stage_dims", "[true, 24, 40, 112, 335]"),
    "stage-dims-object": field("stage_dims", '{"a": 512}'),
    "skipped-1e400": field("skipped", "1e400"),
    "skipped-negative": field("skipped", "-1"),
    "skipped-inflated": field("skipped", "7"),
    "extract-seconds-nan": field("extract_seconds", "nan"),
    "dataset-name-missing": field("dataset_name", None),
    "rows-truncated": tensors(_first_rows(800)),
    "indices-reversed": tensors(lambda t: {**t, "indices": t["indices"].flip(0).contiguous()}),
    "indices-past-the-end": tensors(lambda t: {**t, "indices": t["indices"] + 5000}),
    "features-reshaped": tensors(lambda t: {**t, "features": t["features"].reshape(-1, 256).contiguous()}),
    "features-as-float64": tensors(lambda t: {**t, "features": t["features"].double()}),
}
# Fields the checks cannot judge (any text is a valid name): only the digest catches them.
DIGEST_ONLY = {
    "dataset-name-changed": field("dataset_name", "something else"),
    "extract-seconds-changed": field("extract_seconds", "1.5"),
}


@pytest.fixture
def fake_backbone(monkeypatch):
    made = []

    def create(*args, **kwargs):
        made.append(args)
        return FakeExtractor()

    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", create)
    return made


def _features(folder, spec, memory_map=False):
    return cache.cached_features(
        spec, BACKBONE, weights=WEIGHTS, input_size=32, cache_dir=folder, memory_map=memory_map
    )


def _copy_entry(seeded_cache, folder, spec):
    folder.mkdir(exist_ok=True)
    source = _entry(seeded_cache, spec)
    (folder / source.name).write_bytes(source.read_bytes())
    return folder / source.name


def _assert_recomputed(folder, spec, features, made, caplog, warnings=1):
    damaged = [r for r in caplog.records if "ignoring" in r.getMessage() and "feature cache" in r.getMessage()]
    assert len(damaged) == warnings, [r.getMessage() for r in caplog.records]
    assert made, "the features were not recomputed"
    assert features.stage_dims == STAGES and features.features.shape == (1000, 512)
    assert torch.equal(features.indices, torch.arange(1000)) and features.skipped == 0
    made.clear()
    caplog.clear()
    again = _features(folder, spec)  # the entry was replaced: a plain cache hit now
    assert not made and again.stage_dims == STAGES and not caplog.records


@pytest.mark.parametrize("memory_map", [False, True], ids=["in-memory", "memory-mapped"])
@pytest.mark.parametrize("kind", list(CORPUS))
def test_damaged_entry_is_ignored_once_and_recomputed(kind, memory_map, sandbox, seeded_cache, fake_backbone, caplog):
    path = _copy_entry(seeded_cache, sandbox.cache, TRAIN_SET)
    _rewrite(path, **CORPUS[kind])
    with caplog.at_level(logging.WARNING, logger="dlsr_core.cache"):
        features = _features(sandbox.cache, TRAIN_SET, memory_map)
        _assert_recomputed(sandbox.cache, TRAIN_SET, features, fake_backbone, caplog)


@pytest.mark.parametrize("digest", ["recompute", "drop"], ids=["digest-recomputed", "no-digest"])
@pytest.mark.parametrize("kind", ["stage-dims-permuted", "stage-dims-1e400", "rows-truncated"])
def test_field_checks_hold_without_a_trustworthy_digest(kind, digest, sandbox, seeded_cache, fake_backbone, caplog):
    """A forged digest, or none at all (entries written before it existed), still cannot smuggle a bad field in."""
    _rewrite(_copy_entry(seeded_cache, sandbox.cache, TRAIN_SET), **CORPUS[kind], digest=digest)
    with caplog.at_level(logging.WARNING, logger="dlsr_core.cache"):
        features = _features(sandbox.cache, TRAIN_SET, memory_map=True)
        _assert_recomputed(sandbox.cache, TRAIN_SET, features, fake_backbone, caplog)


@pytest.mark.parametrize("kind", list(DIGEST_ONLY))
def test_an_edit_the_field_checks_cannot_judge_is_caught_by_the_digest(
    kind, sandbox, seeded_cache, fake_backbone, caplog
):
    _rewrite(_copy_entry(seeded_cache, sandbox.cache, TRAIN_SET), **DIGEST_ONLY[kind], digest="keep")
    with caplog.at_level(logging.WARNING, logger="dlsr_core.cache"):
        features = _features(sandbox.cache, TRAIN_SET)
        assert features.dataset == TRAIN_SET
        _assert_recomputed(sandbox.cache, TRAIN_SET, features, fake_backbone, caplog)


def _train(cli, run, *extra):
    return cli("train", "-d", TRAIN_SET, "--out", run, *TINY, *FEATURE_OPTIONS, "--epochs", "2", "--quiet", *extra)


@pytest.mark.parametrize(
    "kind",
    ["stage-dims-1e400", "stage-dims-negative", "stage-dims-permuted", "stage-dims-off-by-one", "rows-truncated"],
)
def test_train_over_a_good_run_with_a_damaged_entry_warns_and_recomputes(
    kind, sandbox, seeded_cache, tiny_run, cli, fake_backbone
):
    """The issue's cases: a traceback, an unloadable run replacing a good one, a wrong stage split, an entry that
    was never recomputed. Now: one warning, the features recomputed, a run with the backbone's true stages."""
    _rewrite(_copy_entry(seeded_cache, sandbox.cache, TRAIN_SET), **CORPUS[kind])
    run = sandbox.copy_run(tiny_run)
    outcome = _train(cli, run, "--restart", "--cache-dir", sandbox.cache)
    assert outcome.code == 0, outcome.err
    assert "Traceback" not in outcome.err and "trained 2/2" in outcome.out
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ignoring damaged feature cache"), outcome.err
    assert_loads(run, epoch=2)
    for name in (FIRST_NAME, LAST_NAME):
        assert load_checkpoint(run / name).info.stage_dims == STAGES
    again = _train(cli, sandbox.runs / "again", "--cache-dir", sandbox.cache)  # the entry was replaced for good
    assert again.code == 0 and again.err == "", again.err


@pytest.mark.parametrize("kind", ["stage-dims-1e400", "stage-dims-permuted", "indices-past-the-end"])
def test_score_with_a_damaged_entry_warns_and_recomputes(kind, sandbox, seeded_cache, tiny_run, cli, monkeypatch):
    monkeypatch.setattr("dlsr_core.backbones.create_feature_extractor", lambda *a, **k: FakeExtractor())
    _rewrite(_copy_entry(seeded_cache, sandbox.cache, ID_SET), **CORPUS[kind])
    output = sandbox.out / "scores.csv"
    outcome = cli(
        "score", "--checkpoint", tiny_run, "-d", ID_SET, "-o", output, "--cache-dir", sandbox.cache, "--quiet"
    )
    assert outcome.code == 0, outcome.err
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ignoring damaged feature cache"), outcome.err
    assert len(output.read_text().splitlines()) == 1001  # a header and one row per image


class _ToyExtractor(FakeExtractor):
    """An unregistered backbone: its stage sizes are known only from the entry itself."""

    name = "toy"
    stage_dims = (100, 412)
    calls = 0

    def __call__(self, batch):
        _ToyExtractor.calls += 1
        return super().__call__(batch)


def test_unregistered_backbone_permuted_stages_are_caught_by_the_digest(sandbox, caplog):
    def features():
        return cache.cached_features(
            TRAIN_SET, "toy", weights="random", input_size=32, cache_dir=sandbox.cache, extractor=_ToyExtractor()
        )

    features()
    (path,) = sandbox.cache.glob("*toy*.safetensors")
    _rewrite(path, **field("stage_dims", "[412, 100]"), digest="keep")  # sums to 512: only the digest can tell
    _ToyExtractor.calls = 0
    with caplog.at_level(logging.WARNING, logger="dlsr_core.cache"):
        result = features()
    assert _ToyExtractor.calls and result.stage_dims == (100, 412)
    assert [r.getMessage() for r in caplog.records if "ignoring damaged" in r.getMessage()], caplog.text


def test_known_stage_sizes_match_the_registered_backbones():
    from dlsr_core.backbones import BACKBONES, create_feature_extractor
    from dlsr_core.features import KNOWN_STAGE_DIMS

    assert set(KNOWN_STAGE_DIMS) == set(BACKBONES)
    for name, spec in BACKBONES.items():
        assert sum(KNOWN_STAGE_DIMS[name]) == spec.feature_dim and len(KNOWN_STAGE_DIMS[name]) == len(spec.out_indices)
    assert create_feature_extractor("efficientnet_lite0", weights="random", device="cpu").stage_dims == STAGES
