"""Datasets for every command: open them all first, extract (or load) their features with progress, report skips."""

from __future__ import annotations

import csv
import io
import sys

from tqdm import tqdm

from dlsr_core.presets import FeatureOptions

PROGRESS_LINES = 4  # progress lines per dataset when stderr is not a terminal (a log, a pipe)


def progress_bar(description: str):
    """(done, total) callback: a tqdm bar on a terminal, otherwise a few plain lines (a log gets no bar junk)."""
    if sys.stderr.isatty():
        bar: dict[str, tqdm] = {}

        def update_bar(done: int, total: int) -> None:
            if "bar" not in bar:
                bar["bar"] = tqdm(total=total, desc=description, unit="img", leave=False)
            bar["bar"].n = done
            bar["bar"].refresh()
            if done >= total:
                bar["bar"].close()

        return update_bar
    printed = {"quarter": 0}

    def update_lines(done: int, total: int) -> None:
        quarter = PROGRESS_LINES * done // max(total, 1)
        if quarter > printed["quarter"]:
            printed["quarter"] = quarter
            print(f"{description}: {done}/{total} images", file=sys.stderr)

    return update_lines


def open_datasets(args, specs: list[str]) -> None:
    """Open every dataset before any is extracted: a missing one fails in seconds, not after the others."""
    from dlsr_core.data import open_dataset

    args.opened = {spec: open_dataset(spec, data_root=args.data_root, download=args.download) for spec in specs}


def report_skipped(args, spec: str, kept_indices) -> None:
    from dlsr_core.atomic import atomic_write_bytes
    from dlsr_core.data import describe_skipped

    dataset = args.opened[spec]
    listed = args.verbose or args.skipped_csv
    skipped = describe_skipped(dataset, kept_indices.tolist()) if listed else []
    count = len(skipped) if listed else len(dataset) - len(kept_indices)
    if count == 0:
        return
    hint = "" if listed else " (name them with --verbose or --skipped-csv FILE)"
    print(f"{spec}: {count} unreadable file(s) skipped{hint}", file=sys.stderr)
    if args.verbose:
        for item, reason in skipped:
            print(f"  skipped {item}: {reason}", file=sys.stderr)
    if args.skipped_csv:
        args.skipped_rows += [(spec, item, reason) for item, reason in skipped]
        buffer = io.StringIO()
        csv.writer(buffer).writerows([("dataset", "item", "reason"), *args.skipped_rows])
        atomic_write_bytes(args.skipped_csv, buffer.getvalue().encode())


def dataset_features(
    args,
    dataset: str,
    backbone: str,
    weights: str,
    input_size: int,
    extractor=None,
    options: FeatureOptions | None = None,
    memory_map: bool = False,
):
    from dlsr_core.cache import cached_features
    from dlsr_core.data import DatasetError

    features = cached_features(
        dataset,
        backbone,
        weights=weights,
        input_size=input_size,
        cache_dir=args.cache_dir,
        data_root=args.data_root,
        download=args.download,
        progress=None if args.quiet else progress_bar(f"features {dataset}"),
        extractor=extractor,
        batch_size=args.batch_size,
        options=options if options is not None else FeatureOptions(),
        memory_map=memory_map,
    )
    if len(features) == 0:
        if args.verbose or args.skipped_csv:
            report_skipped(args, dataset, features.indices)
        hint = "" if args.verbose else " (see why with --verbose)"
        raise DatasetError(f"{dataset}: none of its {len(args.opened[dataset])} images could be read{hint}")
    report_skipped(args, dataset, features.indices)
    return features
