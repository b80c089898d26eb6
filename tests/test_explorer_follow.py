"""Select, filter, follow: image references and the uploads they point to, paging, a map selection's rows and
images, and the failure-case filters — the core the pages' analyst workflow stands on."""

import csv
import hashlib
import io

import numpy as np
import pytest
from test_explorer_failures import make_sets

from dlsr_core import explorer
from dlsr_core.explorer import failures


def test_image_references_round_trip_through_their_token():
    digest = hashlib.sha256(b"png").hexdigest()
    for ref in (
        explorer.ImageRef.of_set("demo:letters", 221),
        explorer.ImageRef.of_set("folder:/data/my:set", 0),  # a spec may hold colons
        explorer.ImageRef.of_upload(digest),
    ):
        assert explorer.ImageRef.from_token(ref.token) == ref
    assert explorer.ImageRef.of_set("demo:letters", 3).label({"demo:letters": "letters"}) == "letters #3"
    assert explorer.ImageRef.of_upload(digest).label(upload_name="shirt.png") == "shirt.png"
    for bad in ("", "set:x:demo:letters", "set:3:", "upload:abc", "demo:letters#3", f"upload:{digest.upper()}"):
        with pytest.raises(ValueError):
            explorer.ImageRef.from_token(bad)
    with pytest.raises(ValueError):
        explorer.ImageRef(spec="demo:letters", index=2, digest=digest)


def test_the_upload_store_keeps_files_by_content_and_drops_the_oldest_beyond_its_limit():
    store = explorer.UploadStore(limit=10)
    first = store.put("a.png", b"12345")
    assert first == hashlib.sha256(b"12345").hexdigest() and store.get(first) == ("a.png", b"12345")
    assert store.put("same.png", b"12345") == first and len(store) == 1  # the same file, one entry
    second = store.put("b.png", b"678")
    third = store.put("c.png", b"9abc")  # 5 + 3 + 4 > 10: the oldest goes
    assert first not in store and second in store and third in store
    assert store.put("big.png", b"x" * 11) not in store and len(store) == 2  # too large to keep; nothing else lost
    assert store.get("0" * 64) is None


def test_page_windows_cover_every_item_once_and_clamp():
    for count, per_page in ((0, 12), (1, 12), (12, 12), (238, 12), (239, 24)):
        first = explorer.page_window(count, per_page, 1)
        seen = []
        for page in range(1, first.pages + 1):
            window = explorer.page_window(count, per_page, page)
            seen += list(range(window.start, window.stop))
        assert seen == list(range(count))
    last = explorer.page_window(238, 12, 99)  # a filter shrank the list: the last page that exists
    assert (last.page, last.pages, last.start, last.stop) == (20, 20, 228, 238)
    assert last.caption == "page 20 of 20: 229–238 of 238"


def _points(with_reconstructions: bool = True) -> explorer.MapPoints:
    sets = ["id"] * 3 + ["ood"] * 2
    indices = np.array([10, 11, 12, 20, 21])
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.05])
    kinds = ["original"] * 5
    if with_reconstructions:
        sets, kinds = sets * 2, kinds + ["reconstructed"] * 5
        indices, scores = np.r_[indices, indices], np.r_[scores, scores]
    return explorer.MapPoints(np.zeros((len(sets), 2)), sets, kinds, indices, {"mfsim": scores})


def test_a_selection_event_maps_to_the_selected_points_rows_and_images():
    points = _points()
    traces = explorer.map_traces(points, ["id", "ood"])
    assert [(t.spec, t.kind, t.rows.tolist()) for t in traces] == [
        ("id", "original", [0, 1, 2]),
        ("id", "reconstructed", [5, 6, 7]),
        ("ood", "original", [3, 4]),
        ("ood", "reconstructed", [8, 9]),
    ]
    # What st.plotly_chart returns for a lasso: curve and point numbers (plus x, y, …); a legend-only trace (4) and a
    # repeated point are ignored.
    event = [
        {"curve_number": 2, "point_index": 1, "x": 0.0, "y": 0.0},
        {"curve_number": 0, "point_number": 2},
        {"curve_number": 1, "point_index": 0},
        {"curve_number": 4, "point_index": 0},
        {"curve_number": 2, "point_index": 1},
    ]
    rows = explorer.selected_rows(traces, event)
    assert rows.tolist() == [4, 2, 5]
    for row, point in zip(rows, event, strict=False):  # every row is the point the event names
        trace = traces[point["curve_number"]]
        assert points.sets[row] == trace.spec and points.kinds[row] == trace.kind

    id_reference = np.linspace(0.0, 1.0, 101)
    threshold = explorer.id_threshold95(id_reference)
    images = explorer.selected_images(points, rows, "mfsim", id_reference, threshold)
    # The reconstruction of id #10 stands for that image: three images, each once, in the order first selected.
    assert [(i.ref.spec, i.ref.index, i.kinds) for i in images] == [
        ("ood", 21, ("original",)),
        ("id", 12, ("original",)),
        ("id", 10, ("reconstructed",)),
    ]
    assert [i.row for i in images] == [4, 2, 0]
    assert [i.score for i in images] == [0.05, 0.9, 0.1]
    assert [i.verdict for i in images] == ["ID", "ID", "ID"] and threshold == pytest.approx(0.95)
    np.testing.assert_allclose(
        [i.id_percentile for i in images], explorer.percent_below(id_reference, [0.05, 0.9, 0.1])
    )

    table = list(
        csv.DictReader(
            io.StringIO(
                explorer.selection_csv(images, {"id": "ID set"}, ["", "a.png", ""], "mfsim", threshold, {"t": 5})
            )
        )
    )
    assert [(r["set"], r["index"], r["file"], r["score_mfsim"], r["t"]) for r in table] == [
        ("ood", "21", "", "0.05", "5"),
        ("ID set", "12", "a.png", "0.9", "5"),
        ("ID set", "10", "", "0.1", "5"),
    ]


def test_a_selection_of_originals_only_and_an_empty_one():
    points = _points(with_reconstructions=False)
    traces = explorer.map_traces(points, ["id", "ood"])
    assert [t.kind for t in traces] == ["original", "original"]
    assert explorer.selected_rows(traces, []).tolist() == []
    assert explorer.selected_images(points, np.array([], dtype=int), "mfsim", np.arange(10.0), 9.0) == []
    rows = explorer.selected_rows(traces, [{"curve_number": 1, "point_index": 0}])
    assert [
        (i.ref.spec, i.ref.index) for i in explorer.selected_images(points, rows, "mfsim", np.arange(10.0), 9.0)
    ] == [("ood", 20)]


def test_failure_filters_by_set_category_and_id_class():
    sets = make_sets(np.random.default_rng(0))
    analysis = explorer.analyse_errors("id", sets, explorer.id_threshold95(sets["id"].scores))
    cases = analysis.cases
    assert explorer.filter_cases(cases) == cases
    assert {c.dataset for c in explorer.filter_cases(cases, sets={"near"})} == {"near"}
    assert len(explorer.filter_cases(cases, sets={"near"})) == analysis.ood_errors["near"]
    low = explorer.filter_cases(cases, categories={failures.LOW_CONTENT})
    assert low and all(failures.LOW_CONTENT in c.categories for c in low)
    # The ID class: an ID error's own class, an OOD error's nearest ID class.
    bag = explorer.filter_cases(cases, classes={"Bag"})
    assert {explorer.id_class_of(c) for c in bag} == {"Bag"}
    assert {c.dataset for c in bag if c.kind == failures.OOD_KIND} == {"near"}
    assert explorer.filter_cases(cases, sets={"near"}, classes={"Shirt"}) == []
    assert explorer.filter_cases(cases, sets=set()) == []
