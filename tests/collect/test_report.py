"""`unet-dist report` and evaluate's per-image table, on the real campaign and run of ``collect_tree``.

The report of the local copy of the tree (whose records point at S3) must hold decodable figures, every trial's
searched values, overlays and a test view whose numbers are evaluate's; evaluate (pyarrow, no Ray) must equal
the training-time validation and the Ray Data path exactly, and its per-image rows must add up to the aggregate.
Budget: about 60 s on top of the shared fixture.
"""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from unet_dist.cli import main
from unet_dist.collect.report import write_report
from unet_dist.config import IngestConfig
from unet_dist.runs import CampaignDir, RunDir
from unet_dist.storage import resolve
from unet_dist.inference.evaluate import evaluate
from unet_dist.inference.metrics import scores

pytestmark = [pytest.mark.s3, pytest.mark.ray]


class Page(HTMLParser):
    """The parts of a report page the tests read: sections, images, tables, figures."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.section: str | None = None
        self.sections: dict[str, dict[str, str]] = {}
        self.images: list[tuple[str | None, dict[str, str]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.values: dict[str, list[list[str | None]]] = {}
        self.figures: list[tuple[str | None, str, str]] = []  # (section, grid id, image id)
        self.urls: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._grid = ""
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.urls += [v for k, v in a.items() if k in ("src", "href", "action", "srcset")]
        if tag == "section":
            self.section = a.get("id")
            self.sections[self.section] = a
        elif tag == "img":
            self.images.append((self.section, a))
        elif tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table], self.values[self._table] = [], []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
            self.values[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
            self.values[self._table][-1].append(a.get("data-value"))
        elif tag == "div" and "grid" in a.get("class", ""):
            self._grid = a.get("id", "")
        elif tag == "figure":
            self.figures.append((self.section, self._grid, a.get("data-id", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: str) -> list[dict[str, str]]:
        head, *body = self.tables[table]
        return [dict(zip(head, r)) for r in body]

    def png(self, section: str) -> list[Image.Image]:
        """Every image of a section, decoded (each must be an embedded PNG)."""
        out = []
        for where, a in self.images:
            if where == section:
                assert a["src"].startswith("data:image/png;base64,")
                im = Image.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1])))
                im.load()
                assert im.format == "PNG" and im.width > 32 and im.height > 32
                out.append(im)
        return out


def _offline(text: str, page: Page) -> None:
    assert all(u.startswith("data:") for u in page.urls), [u[:60] for u in page.urls if not u.startswith("data:")]
    assert not re.search(r"<(script|link|iframe|object|embed)\b", text, re.I)
    assert "@import" not in text and "url(" not in text


def _split_ids(dataset: str, split: str) -> set[str]:
    from unet_dist.data.manifest import read_manifest
    from unet_dist.inference.evaluate import split_rows

    return {i for i, _, _ in split_rows(read_manifest(dataset), split)}


def test_campaign_report_of_a_copied_tree(collect_tree: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    local = f"{collect_tree['local']}/{collect_tree['campaign']}"
    out = tmp_path / "report.html"
    assert main(["report", local, "-o", str(out), "--data", collect_tree["dataset"], "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    text = out.read_text()
    page = Page(text)
    _offline(text, page)
    assert summary["kind"] == "campaign" and summary["split"] == "test" and summary["notes"] == []
    assert summary["checkpoint"].startswith(local + "/trials/")  # found in the copy, not at the recorded S3 URI

    assert len(page.png("curves")) == 1
    records = {k: r.read_record() for k, r in CampaignDir(resolve(local)).trials().items()}
    board = {r["trial"]: r for r in page.rows("leaderboard")}
    assert set(board) == set(records)
    for trial_id, record in records.items():
        for key, value in record["params"].items():
            assert board[trial_id][key] == str(value), (trial_id, key)
    assert board[summary["best"]]["rank"] == "1"

    val_ids = _split_ids(collect_tree["dataset"], "val")
    shown_val = [i for s, _, i in page.figures if s == "overlays"]
    assert len(page.png("overlays")) == len(shown_val) == len(val_ids) == 3 and set(shown_val) == val_ids

    measured = evaluate(summary["checkpoint"], split="test", dataset=collect_tree["dataset"])
    assert page.sections["test-view"]["data-split"] == "test"
    per_class = {row[0]: float(values[1]) for row, values in zip(page.tables["per-class"][1:], page.values["per-class"][1:])}
    assert per_class == {**measured["per_class_iou"], "mean": measured["mean_iou"]}  # exact: repr round-trips
    images = page.png("test-view")
    assert len(images) == 2 + 3  # confusion matrix, histogram, all 3 test images (fewer than 5 + 5)
    assert len({r["pixels"] for r in measured["per_image"]}) == 1 and "Every image has the same size" in text
    shown = [i for s, g, i in page.figures if s == "test-view"]
    assert shown == [r["id"] for r in reversed(measured["per_image"])] and set(shown) == _split_ids(collect_tree["dataset"], "test")


def test_single_run_report_from_s3(collect_tree: dict, tmp_path: Path) -> None:
    uri = f"{collect_tree['s3']}/{collect_tree['run']}"
    report = write_report(uri, str(tmp_path / "single.html"), val_images=2)
    page = Page(report.html)
    _offline(report.html, page)
    assert report.subject.kind == "run" and report.best_run == collect_tree["run"] and report.checkpoint.startswith(uri)
    assert len(page.png("curves")) == 1 and len(page.png("overlays")) == 2
    assert [r["trial"] for r in page.rows("leaderboard")] == [collect_tree["run"]]
    assert page.sections["test-view"]["data-split"] == "test" and len(page.png("test-view")) == 5


def test_report_without_a_test_split_says_so_and_uses_val(collect_tree: dict, isbi_small_dir: Path,
                                                          tmp_path: Path) -> None:
    from unet_dist.data.ingest import ingest

    no_test = str(tmp_path / "no-test")
    ingest(str(isbi_small_dir), no_test, IngestConfig(split=(0.75, 0.25, 0.0), seed=0), progress=False)
    report = write_report(f"{collect_tree['local']}/{collect_tree['run']}", str(tmp_path / "r.html"), dataset=no_test,
                          val_images=1)
    page = Page(report.html)
    assert report.split == "val" and page.sections["test-view"]["data-split"] == "val"
    assert "has no test split" in report.html and any("no test split" in n for n in report.notes)
    assert {i for s, _, i in page.figures if s == "test-view"} == _split_ids(no_test, "val")


def test_the_histogram_marks_the_few_large_images_of_a_mixed_set(collect_tree: dict, tmp_path: Path) -> None:
    """Five 40-px test images and one of 160 px (its 25,600 pixels outweigh the other 8,000): the page names that one
    image as holding half the pixels, and draws its bar in its own colour."""
    from tests.train.datagen import write_csv, write_pairs
    from unet_dist.data.ingest import ingest

    names = write_pairs(tmp_path / "raw", [48, 40, 40, 40, 40, 40, 160])
    rows = [(f"images/{n}", f"masks/{n}", "train" if i == 0 else "test") for i, n in enumerate(names)]
    mixed = str(tmp_path / "mixed")
    ingest(str(write_csv(tmp_path / "raw" / "list.csv", rows)), mixed, IngestConfig(split_column="split"), progress=False)
    report = write_report(f"{collect_tree['local']}/{collect_tree['run']}", str(tmp_path / "r.html"), dataset=mixed,
                          val_images=1)
    assert "In orange, the 1 largest of 6 images: they hold half the pixels" in report.html
    histogram = next(a for s, a in Page(report.html).images if s == "test-view" and "histogram" in a["alt"])
    colours = Image.open(io.BytesIO(base64.b64decode(histogram["src"].split(",", 1)[1]))).convert("RGB").getcolors(1 << 20)
    assert (255, 127, 14) in {c for _, c in colours}  # matplotlib's C1, the heavy images' colour


def _ray_path(checkpoint: str, split: str, dataset: str) -> dict[str, Any]:
    """Yesterday's evaluate: Ray Data reads the split, the validation iterator batches it, validate scores it."""
    from unet_dist.data.manifest import read_manifest
    from unet_dist.data.pipeline import build_datasets, iter_val_batches, pipeline_spec
    from unet_dist.inference.model import load_model
    from unet_dist.inference.validate import validate
    from unet_dist.losses import create_loss

    loaded = load_model(checkpoint)
    cfg = loaded.cfg
    manifest = read_manifest(dataset)
    ds = build_datasets(cfg.data, cfg.storage, cfg.model.in_channels, manifest, splits=(split,))[split]
    spec = pipeline_spec(cfg.data, cfg.storage, cfg.model.in_channels, manifest,
                         pad_multiple=loaded.state["inference"]["pad_multiple"]).with_stats(loaded.image_stats)
    loss_fn = create_loss(cfg.train.loss, cfg.model.num_classes, cfg.train.class_weights)
    batches = iter_val_batches(ds.iterator(), cfg.data.val_batch_size, spec, 0, 1)
    return validate(loaded.model, batches, loss_fn, cfg, torch.device("cpu"), loaded.class_names or None)[0]


def test_evaluate_without_ray_equals_training_and_ray_data(collect_tree: dict, ray_local: Any,
                                                          capsys: pytest.CaptureFixture) -> None:
    run = RunDir(resolve(f"{collect_tree['local']}/{collect_tree['run']}"))
    rows = run.metrics()
    checkpoint = run.checkpoints()[len(rows) - 1].uri
    dataset = collect_tree["dataset"]
    val = evaluate(checkpoint, split="val", dataset=dataset)
    assert val["confusion_matrix"] == rows[-1]["val_confusion_matrix"]
    assert val["mean_iou"] == rows[-1]["val_mean_iou"] and val["iou"] == rows[-1]["val_iou"]

    assert main(["evaluate", checkpoint, "--split", "test", "--data", dataset, "--json"]) == 0
    test = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ray = _ray_path(checkpoint, "test", dataset)
    assert test["confusion_matrix"] == ray["confusion_matrix"]
    for key in ("iou", "mean_iou", "dice", "mean_dice", "pixel_acc", "per_class_iou", "per_class_dice", "images"):
        assert test[key] == ray[key], key
    assert test["loss"] == pytest.approx(ray["loss"], rel=1e-6)

    per_image = test["per_image"]
    assert len(per_image) == test["images"] == 3
    assert [r["iou"] for r in per_image] == sorted(r["iou"] for r in per_image)  # worst first
    total = torch.tensor([r["confusion_matrix"] for r in per_image]).sum(0)
    assert total.tolist() == test["confusion_matrix"]  # pixel-weighted TP/FP/FN add up to the split's
    tp, fp, fn = int(total[1, 1]), int(total[0, 1]), int(total[1, 0])
    assert tp / (tp + fp + fn) == pytest.approx(test["iou"], rel=1e-12)
    for r in per_image:  # one image alone: its row is the aggregate metric of that image
        alone = scores(torch.tensor(r["confusion_matrix"]), ["background", "foreground"])
        assert (r["iou"], r["dice"], r["pixel_acc"]) == (alone["iou"], alone["dice"], alone["pixel_acc"])
        assert r["pixels"] == 128 * 128

    assert main(["evaluate", checkpoint, "--split", "test", "--data", dataset, "--per-image", "2"]) == 0
    shown = capsys.readouterr().out
    assert "worst 2 of 3 images" in shown and all(str(r["id"]) in shown for r in per_image[:2])
