"""Damaged, crafted and inconsistent checkpoints: every one is refused with one clear line, nothing is built or written.

Each kind is a real file on disk, loaded through the CLI (`score`, exit 2) and the library (CheckpointError).
"""

from __future__ import annotations

import json
import time

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import ID_SET, assert_clean_error, assert_loads

from dlsr_core.atomic import sha256_hex
from dlsr_core.checkpoint import (
    DEFAULT_RUN_DIR,
    DIGEST_KEY,
    FIRST_NAME,
    LAST_NAME,
    CheckpointError,
    checksum_path,
    content_digest,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)


def _read(path):
    tensors = safetensors.torch.load_file(str(path))
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    return tensors, metadata


def _write(path, tensors, metadata, redigest=True):
    """Save like save_checkpoint would (digest and checksum file consistent) unless `redigest` is False."""
    if redigest and DIGEST_KEY in metadata:
        metadata[DIGEST_KEY] = content_digest(tensors, metadata)
    data = safetensors.torch.save(tensors, metadata=metadata)
    path.write_bytes(data)
    checksum_path(path).write_text(f"{sha256_hex(data)}  {path.name}\n")


def metadata_edit(**changes):
    def edit(path):
        tensors, metadata = _read(path)
        metadata.update(changes)
        _write(path, tensors, metadata)

    return edit


def info_edit(change, redigest=True):
    def edit(path):
        tensors, metadata = _read(path)
        info = json.loads(metadata["info"])
        change(info)
        metadata["info"] = json.dumps(info)
        _write(path, tensors, metadata, redigest)

    return edit


def config_edit(**changes):
    return info_edit(lambda info: info["config"].update(changes))


def nan_weights(path):
    tensors, metadata = _read(path)
    tensors["model.input_projection.weight"][0, 0] = float("nan")
    _write(path, tensors, metadata)


def drop_tensor(path):
    tensors, metadata = _read(path)
    del tensors["model.norm_final.weight"]
    _write(path, tensors, metadata)


def raw_bytes(transform, keep_checksum_file=False):
    def edit(path):
        data = transform(path.read_bytes())
        path.write_bytes(data)
        if not keep_checksum_file:
            checksum_path(path).unlink(missing_ok=True)

    return edit


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x40])


def stale_checksum_file(path):
    checksum_path(path).write_text(checksum_path(path.with_name(FIRST_NAME)).read_text())


CORPUS = {
    "info-not-json": (metadata_edit(info="{this is not json"), "not JSON"),
    "info-is-a-list": (metadata_edit(info="[1, 2, 3]"), "must be a JSON object"),
    "info-extra-key": (info_edit(lambda info: info.update(colour="blue")), "unknown key(s) 'colour'"),
    "info-missing-key": (info_edit(lambda info: info.pop("backbone")), "lacks the required key 'backbone'"),
    "width-as-string": (config_edit(width="16"), "width must be an integer"),
    "depth-as-bool": (config_edit(depth=True), "depth must be an integer"),
    "beta-nan": (config_edit(beta_start=float("nan")), "beta_start must be a finite number"),
    "format-version-abc": (metadata_edit(format_version="abc"), "format version 'abc'"),
    "format-version-fraction": (metadata_edit(format_version="1.5"), "format version '1.5'"),
    "format-version-future": (metadata_edit(format_version="7"), "format version '7'"),
    "format-name-other": (metadata_edit(format="some-other-model"), "not a DLSR LFDN checkpoint"),
    "metadata-extra-key": (metadata_edit(note="hi"), "unknown metadata key(s) 'note'"),
    "input-size-zero": (info_edit(lambda info: info.update(input_size=0)), "input_size = 0 is outside"),
    "input-size-negative": (info_edit(lambda info: info.update(input_size=-64)), "input_size = -64 is outside"),
    "stage-sizes-mismatch": (info_edit(lambda info: info.update(stage_dims=[16, 24])), "stage sizes (16, 24)"),
    "width-200000": (config_edit(width=200_000), "width = 200000"),
    "depth-million": (config_edit(depth=1_000_000), "depth = 1000000"),
    "timesteps-billion": (config_edit(num_timesteps=10**9), "num_timesteps 1000000000 is above"),
    "feature-dim-other": (
        info_edit(lambda info: info.update(config={**info["config"], "feature_dim": 8}, stage_dims=[8])),
        "do not fit the stored config",
    ),
    "tensor-missing": (drop_tensor, "1 tensor(s) missing"),
    "nan-weights-valid-digest": (nan_weights, "NaN/Inf"),
    "epoch-edited-no-digest": (info_edit(lambda info: info.update(epoch=99), redigest=False), "digest stored inside"),
    "payload-bit-flip": (raw_bytes(flip_last_byte), "digest stored inside"),
    "bit-flip-with-checksum-file": (raw_bytes(flip_last_byte, keep_checksum_file=True), "checksum file"),
    "truncated-half": (raw_bytes(lambda data: data[: len(data) // 2]), "damaged"),
    "empty-file": (raw_bytes(lambda data: b""), "damaged"),
    "header-length-garbage": (raw_bytes(lambda data: b"\xff" * 8 + data[8:]), "damaged"),
    "text-file": (raw_bytes(lambda data: b"just some text, not weights\n"), "damaged"),
    "stale-checksum-file": (stale_checksum_file, "checksum file"),
    # Option values the checkpoint records for scoring: digest-consistent, refused when read (issue 17, defect 7).
    "sampler-bogus": (info_edit(lambda info: info.update(sampler="bogus")), "sampler must be one of"),
    "timestep-zero": (info_edit(lambda info: info.update(timestep=0)), "timestep must be >= 1"),
    "timestep-above-T": (info_edit(lambda info: info.update(timestep=101)), "timestep must be in 1..100"),
    "official-timestep-2": (
        info_edit(lambda info: info.update(sampler="official", timestep=2)),
        "official sampler needs timestep >= 3",
    ),
    "mfsim-stages-bogus": (info_edit(lambda info: info.update(mfsim_stages="bogus")), "mfsim_stages must be one of"),
    "pooling-bogus": (info_edit(lambda info: info.update(pooling="bogus")), "pooling must be one of"),
    "std-eps-zero": (info_edit(lambda info: info.update(std_eps=0)), "std_eps must be in (0, 1)"),
    "std-eps-above-one": (info_edit(lambda info: info.update(std_eps=1.5)), "std_eps must be in (0, 1)"),
    "resize-bogus": (info_edit(lambda info: info.update(resize="bogus")), "resize must be one of"),
    "normalization-bogus": (info_edit(lambda info: info.update(normalization="x")), "normalization must be one of"),
    "same-padding-bogus": (info_edit(lambda info: info.update(same_padding="x")), "same_padding must be one of"),
    "stage-sizes-permuted": (
        info_edit(lambda info: info.update(stage_dims=[320, 112, 40, 24, 16])),
        "are not those of efficientnet_lite0",
    ),
}


@pytest.mark.parametrize("kind", list(CORPUS))
def test_bad_checkpoint_is_refused_in_one_line(kind, sandbox, tiny_run, seeded_cache, cli):
    damage, needle = CORPUS[kind]
    run = sandbox.copy_run(tiny_run)
    damage(run / LAST_NAME)
    before = sandbox.snapshot()
    started = time.perf_counter()
    outcome = cli(
        "score",
        "--checkpoint",
        run,
        "-d",
        ID_SET,
        "-o",
        sandbox.out / "scores.csv",
        "--cache-dir",
        seeded_cache,
        "--quiet",
    )
    elapsed = time.perf_counter() - started
    assert_clean_error(outcome, 2, needle)
    with pytest.raises(CheckpointError):
        load_checkpoint(run / LAST_NAME)
    sandbox.assert_only_changed(before)  # nothing written: no CSV, the run untouched
    assert not (sandbox.out / "scores.csv").exists()
    load_checkpoint(run / FIRST_NAME)  # the other checkpoint of the run is unaffected
    print(f"{kind}: refused in {elapsed:.2f} s")


def test_width_200000_is_refused_before_anything_is_built(sandbox, tiny_run, monkeypatch):
    run = sandbox.copy_run(tiny_run)
    config_edit(width=200_000)(run / LAST_NAME)
    from dlsr_core import checkpoint

    monkeypatch.setattr(checkpoint, "LFDN", lambda config: pytest.fail(f"a model was built for {config}"))
    with pytest.raises(CheckpointError, match="no tensor in the file is that large"):
        load_checkpoint(run / LAST_NAME)


def test_new_fields_with_defaults_are_accepted(tiny_run, sandbox):
    """The reader follows the dataclasses: a file written before a defaulted field existed still loads."""
    from dataclasses import field, make_dataclass

    from dlsr_core.schema import SchemaError, from_json

    extended = make_dataclass("Extended", [("width", int), ("activation", str, field(default="silu"))], frozen=True)
    assert from_json(extended, {"width": 3}).activation == "silu"
    assert from_json(extended, {"width": 3, "activation": "gelu"}).activation == "gelu"
    for bad in ({"width": "3"}, {"width": True}, {"width": 3, "other": 1}, {}, [3]):
        with pytest.raises(SchemaError):
            from_json(extended, bad)


def test_save_keeps_weights_and_digest_together(sandbox, tiny_run):
    run = sandbox.copy_run(tiny_run)
    loaded = load_checkpoint(run / LAST_NAME)
    stale = checksum_path(run / LAST_NAME)
    stale.write_text("0" * 64 + "  last.safetensors\n")  # a digest of some other file
    save_checkpoint(run / LAST_NAME, loaded.model, loaded.info, loaded.feature_mean, loaded.feature_std)
    data = (run / LAST_NAME).read_bytes()
    assert stale.read_text().split()[0] == sha256_hex(data)
    _, metadata = _read(run / LAST_NAME)
    assert len(metadata[DIGEST_KEY]) == 64
    stale.unlink()  # the embedded digest alone is enough
    assert_loads(run, epoch=2)
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        broken = loaded.model
        torch.nn.init.constant_(broken.output_projection.bias, float("inf"))
        save_checkpoint(sandbox.out / "x.safetensors", broken, loaded.info, loaded.feature_mean, loaded.feature_std)
    assert not (sandbox.out / "x.safetensors").exists()


def test_shipped_default_still_loads_with_its_checksum_files():
    if not (DEFAULT_RUN_DIR / LAST_NAME).is_file():
        pytest.skip("no shipped model")
    info = read_checkpoint_info(DEFAULT_RUN_DIR / LAST_NAME)
    assert (info.config.width, info.config.depth, info.input_size) == (512, 6, 64)
    _, metadata = _read(DEFAULT_RUN_DIR / LAST_NAME)
    assert DIGEST_KEY not in metadata  # written before the embedded digest: verified by its .sha256 file
    assert checksum_path(DEFAULT_RUN_DIR / LAST_NAME).is_file()
