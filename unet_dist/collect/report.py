"""``unet-dist report``: one self-contained HTML page about a run or a campaign, viewable offline.

The page holds training curves (train and val IoU and loss per epoch, one line per trial), the leaderboard with
the searched values, the best model's predictions on a few validation images (TP green, FP red, FN blue: the
TensorBoard overlays) and a test view: per-class IoU and Dice, pixel accuracy, the confusion matrix, the per-image
IoU distribution and the best and worst test images. Figures are PNG ``data:`` URIs and the style is inline: the
page loads nothing from anywhere.

No Ray: metrics come from the run files (:mod:`unet_dist.runs`), the test view from
:func:`unet_dist.inference.evaluate.evaluate_model`, which reads the dataset's Parquet shards directly. Runs are
found relative to the folder given, never through the absolute URIs their records hold, so a copied or synced tree
reports the same.
"""

from __future__ import annotations

import html
import math
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from unet_dist.collect import plots
from unet_dist.config import StorageConfig
from unet_dist.errors import StorageError, UserError
from unet_dist.runs import CAMPAIGN_RECORD, LEGACY_MONITOR, RUN_RECORD, Best, CampaignDir, RunDir, now_iso
from unet_dist.storage import Location, resolve

EXTREMES = 5
HIDDEN_COLUMNS = frozenset({"campaign", "kind", "metric", "mode", "dataset", "dataset_fingerprint", "run_uri",
                            "started_at", "ended_at", "updated_at", "epochs_planned"})
PATH_COLUMNS = frozenset({"best_checkpoint", "run_uri"})
LEGEND = (("#00ff00", "true positive"), ("#ff0000", "false positive"), ("#0000ff", "false negative"))


@dataclass
class Subject:
    """What a report is about: a campaign (its trials), a single run, or a whole storage (kind ``storage``: no record or
    runs of its own), with the metric that ranks them."""

    kind: str
    loc: Location
    record: dict[str, Any]
    runs: dict[str, RunDir]
    records: dict[str, dict[str, Any]]
    metric: str
    mode: str

    @property
    def name(self) -> str:
        return str(self.record.get("name") or self.loc.name)


@dataclass
class Report:
    """The rendered page and what the reader should know about what it lacks."""

    html: str
    subject: Subject
    best_run: str | None = None
    checkpoint: str | None = None
    split: str | None = None
    notes: list[str] = field(default_factory=list)
    insight: Any = None
    """A campaign's :class:`~unet_dist.collect.insight.Insight` (None for a run or a storage)."""


def open_subject(uri: str, storage: StorageConfig | None = None) -> Subject:
    """The campaign (``campaign.json``) or run (``run.json``) folder at ``uri``."""
    loc = resolve(uri, storage)
    if (loc / CAMPAIGN_RECORD).exists():
        campaign = CampaignDir(loc)
        runs = campaign.trials()
        records = {k: r for k, run in runs.items() if (r := run.read_record())}
        record = campaign.read_record() or {}
        return Subject("campaign", loc, record, {k: runs[k] for k in records}, records,
                       record.get("metric", LEGACY_MONITOR["metric"]), record.get("mode", LEGACY_MONITOR["mode"]))
    if (loc / RUN_RECORD).exists():
        run = RunDir(loc)
        record = run.read_record() or {}
        monitor = record.get("monitor") or LEGACY_MONITOR
        return Subject("run", loc, record, {loc.name: run}, {loc.name: record}, monitor["metric"], monitor["mode"])
    raise StorageError(f"{loc.uri} holds neither {CAMPAIGN_RECORD} nor {RUN_RECORD}: pass a run or campaign folder "
                       "(STORAGE/<name>, as `unet-dist train` or `unet-dist tune` wrote it)")


def run_label(record: dict[str, Any], fallback: str) -> str:
    """A run's searched values (``backbone=resnet18, unpooling=bilinear``), or ``fallback`` for a single run."""
    params = record.get("params") or {}
    if not params:
        return fallback
    short = {k: k.rsplit(".", 1)[-1] for k in params}
    unique = len(set(short.values())) == len(short)
    return ", ".join(f"{short[k] if unique else k}={v}" for k, v in params.items())


def _best_value(record: dict[str, Any]) -> float | None:
    value = (record.get("best") or {}).get("value")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def ranked(subject: Subject) -> list[str]:
    """Run keys, best first by the subject's metric (recorded best value); runs without one last."""
    sign = -1.0 if subject.mode == "max" else 1.0

    def key(k: str) -> tuple[bool, float, str]:
        value = _best_value(subject.records[k])
        return value is None, sign * (value or 0.0), k

    return sorted(subject.records, key=key)


def subject_rows(subject: Subject, metrics: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The collector's leaderboard rows (:func:`unet_dist.collect.leaderboard.run_row`) of the subject's runs, ranked;
    ``metrics`` is ``{run key: metrics rows}``."""
    from unet_dist.collect.leaderboard import rank, run_row

    campaign = subject.name if subject.kind == "campaign" else None
    return rank([_placed(run_row(subject.records[k], campaign, metrics=metrics[k]), k, subject.runs[k])
                 for k in subject.records], subject.metric, subject.mode)


def leaderboard_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`subject_rows` in the collector's column order, less what the page header already says."""
    from unet_dist.collect.leaderboard import columns

    shown = [c for c in columns(rows) if c not in HIDDEN_COLUMNS]
    return [{c: r.get(c) for c in shown} for r in rows]


def _placed(row: dict[str, Any], key: str, run: RunDir) -> dict[str, Any]:
    """A leaderboard row pointing into this tree (records hold the URIs they were written at)."""
    recorded = row.get("best_checkpoint")
    checkpoint = (run.loc / posixpath.basename(recorded.rstrip("/"))).uri if recorded else None
    return {**row, "trial": key, "best_checkpoint": checkpoint, "run_uri": run.uri}


def best_model(subject: Subject) -> tuple[str, Best] | None:
    """``(run key, best epoch)`` of the best run that still has a complete checkpoint, found in its own folder."""
    for key in ranked(subject):
        best = subject.runs[key].best(subject.metric, subject.mode)
        if best is not None:
            return key, best
    return None


# --- page -------------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:16px;
color:#1d232a;background:#fff;line-height:1.4}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #d8dee4;padding-bottom:.2em}
h3{font-size:1.02em;margin:1.1em 0 .4em}
table{border-collapse:collapse;font-size:.88em}th,td{padding:3px 8px;border-bottom:1px solid #e6e9ec;text-align:left;
white-space:nowrap}th{background:#f4f6f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#eefbea;font-weight:600}.scroll{overflow-x:auto;max-width:100%}
img.figure{max-width:100%;height:auto;display:block}
.meta td{white-space:normal;overflow-wrap:anywhere}.meta td:first-child{color:#57606a;padding-right:16px;white-space:nowrap}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
figure{margin:0}figure img{width:100%;height:auto;image-rendering:pixelated;border:1px solid #d8dee4}
figcaption{font-size:.8em;color:#57606a;overflow-wrap:anywhere}
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:-.1em}
.hint{color:#555;font-size:.85em;max-width:52ch;margin:4px 0}
.note{background:#fff8e5;border-left:4px solid #e3b341;padding:6px 10px;margin:8px 0}
.status{border-radius:8px;padding:0 6px;font-size:.85em;background:#eaeef2}
.status.finished{background:#dafbe1}.status.early_stopped{background:#fff1c2}.status.error,.status.failed,
.status.invalid{background:#ffd8d3}.status.running{background:#ddf4ff}
.row{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}.row>div{min-width:0;max-width:100%}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}.card{border:1px solid #d8dee4;border-radius:6px;
padding:6px 12px;min-width:110px}.card b{display:block;font-size:1.25em}.card small{color:#57606a}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _cell(value: Any, column: str = "") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num" data-value="{_e(repr(value))}">{_e(_fmt(value))}</td>'
    if column in PATH_COLUMNS and isinstance(value, str):
        return f'<td title="{_e(value)}">{_e(value.rstrip("/").rsplit("/", 1)[-1])}</td>'
    return f"<td>{_e(_fmt(value))}</td>"


def _table(rows: list[dict[str, Any]], table_id: str, highlight: int | None = None) -> str:
    """A table of flat rows (columns in first-seen order; nested values left out)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k, v in row.items() if k not in columns and not isinstance(v, (dict, list, tuple))]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        f'<tr{" class=best" if i == highlight else ""}>' + "".join(_cell(row.get(c), c) for c in columns) + "</tr>"
        for i, row in enumerate(rows))
    return f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _img(png: bytes, alt: str, cls: str = "figure", image_id: str | None = None) -> str:
    ident = f' id="{_e(image_id)}"' if image_id else ""
    return f'<img{ident} class="{cls}" alt="{_e(alt)}" src="{plots.data_uri(png)}">'


def _figure(png: bytes, caption: str, image_id: str) -> str:
    return f'<figure data-id="{_e(image_id)}">{_img(png, caption, "overlay")}<figcaption>{_e(caption)}</figcaption></figure>'


def _legend() -> str:
    return '<p class="legend">' + "".join(f'<span style="background:{c}"></span>{_e(t)}' for c, t in LEGEND) + "</p>"


def _meta(subject: Subject, best: tuple[str, Best] | None, dataset: str | None) -> str:
    counts: dict[str, int] = {}
    for record in subject.records.values():
        counts[str(record.get("status"))] = counts.get(str(record.get("status")), 0) + 1
    items = [("kind", subject.kind), ("location", _e(subject.loc.uri)),
             ("status", f'<span class="status {_e(subject.record.get("status"))}">{_e(subject.record.get("status"))}</span>'),
             ("dataset", _e(dataset or "–")), ("metric", _e(f"{subject.metric} ({subject.mode})"))]
    if subject.kind == "campaign":
        items.append(("trials", _e(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")))
        space = subject.record.get("search_space") or {}
        items.append(("searched", _e(", ".join(space) or "–")))
        items.append(("scheduler", _e(f"{subject.record.get('scheduler')} · search {subject.record.get('search')}")))
    if best:
        key, b = best
        who = f"{key} ({run_label(subject.records[key], key)}) · " if subject.kind == "campaign" else ""
        items.append(("best", _e(f"{who}{subject.metric} {b.value:.4f} at epoch {b.epoch}")))
        items.append(("best checkpoint", _e(b.checkpoint)))
    for label, key in (("started", "started_at"), ("ended", "ended_at"), ("code version", "code_version")):
        if subject.record.get(key):
            items.append((label, _e(subject.record[key])))
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in items)
    return f'<table class="meta">{rows}</table>'


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


# --- the model's views -------------------------------------------------------------------------------------------

def _overlays(loaded: Any, manifest: dict[str, Any], split: str, ids: Iterable[str] | None, limit: int | None,
              captions: dict[str, str] | None = None) -> dict[str, tuple[bytes, str]]:
    """``{id: (overlay PNG, caption)}`` of whole-image predictions for ``ids`` (or the first ``limit`` images)."""
    import torch

    from unet_dist.data.codec import decode_image, decode_mask
    from unet_dist.inference.evaluate import split_rows
    from unet_dist.inference.metrics import confusion_matrix, scores
    from unet_dist.inference.overlay import overlay
    from unet_dist.losses import remap_ignore

    wanted = set(ids) if ids is not None else None
    out: dict[str, tuple[bytes, str]] = {}
    for image_id, image, mask in split_rows(manifest, split, loaded.cfg.storage, wanted):
        pixels = decode_image(image)
        target = remap_ignore(torch.from_numpy(decode_mask(mask)), loaded.cfg.train.ignore_index)
        pred = loaded.predict(pixels)
        caption = (captions or {}).get(image_id)
        if caption is None:
            s = scores(confusion_matrix(pred, target, max(2, loaded.cfg.model.num_classes)), loaded.class_names or None)
            caption = f"{image_id} · IoU {s['iou']:.3f} · Dice {s['dice']:.3f}"
        out[image_id] = plots.rgb_tensor_png(overlay(loaded.preprocess(pixels), pred, target)), caption
        if limit is not None and len(out) >= limit:
            break
    return out


def _grid(images: dict[str, tuple[bytes, str]], order: list[str], grid_id: str) -> str:
    return f'<div class="grid" id="{grid_id}">' + "".join(_figure(*images[i], i) for i in order if i in images) + "</div>"


def _histogram(table: list[dict[str, Any]]) -> str:
    """The per-image IoU histogram with the images that carry half the pixels marked, and a line saying so."""
    pixels = [r["pixels"] for r in table]
    heavy = plots.heaviest(pixels) if len(set(pixels)) > 1 else None
    if heavy is None:
        note = "Every image has the same size, so each weighs the same in the pooled IoU as in the per-image IoU."
    else:
        note = (f"In orange, the {sum(heavy)} largest of {len(table)} images: they hold half the pixels, so the pooled "
                "IoU is mostly theirs; the per-image IoU counts every image once.")
    png = plots.histogram_png([r["iou"] for r in table], "IoU per image", heavy)
    return _img(png, "per-image IoU histogram; " + note) + f'<p class="hint" id="heavy-images">{_e(note)}</p>'


def _test_view(loaded: Any, manifest: dict[str, Any], split: str, progress: bool) -> str:
    from unet_dist.inference.evaluate import evaluate_model

    out = evaluate_model(loaded, manifest, split, progress=progress)
    names = list(out["per_class_iou"])
    binary = len(names) == 2
    cards = [("per-image IoU" if binary else "per-image mean IoU", out["image_iou"]),
             ("pooled foreground IoU" if binary else "pooled mean IoU", out["iou"]), ("pooled mean IoU", out["mean_iou"]),
             ("per-image Dice" if binary else "per-image mean Dice", out["image_dice"]), ("pooled Dice", out["dice"]),
             ("pixel accuracy", out["pixel_acc"]), ("loss", out["loss"]), ("images", out["images"])]
    if not binary:
        cards.pop(2)
    body = '<div class="cards" id="summary">' + "".join(
        f'<div class="card" data-metric="{_e(k)}"><b>{_e(_fmt(v))}</b><small>{_e(k)}</small></div>' for k, v in cards) + "</div>"
    per_class = [{"class": n, "IoU": out["per_class_iou"][n], "Dice": out["per_class_dice"][n]} for n in names]
    per_class.append({"class": "mean", "IoU": out["mean_iou"], "Dice": out["mean_dice"]})
    body += "<h3>Per class</h3>" + _table(per_class, "per-class")
    table = out["per_image"]
    body += ('<div class="row"><div><h3>Confusion matrix</h3>'
             + _img(plots.confusion_png(out["confusion_matrix"], names), "confusion matrix")
             + "</div><div><h3>Per-image IoU</h3>" + _histogram(table) + "</div></div>")
    captions = {r["id"]: f"{r['id']} · IoU {r['iou']:.3f} · Dice {r['dice']:.3f}" for r in table}
    if len(table) <= 2 * EXTREMES:
        groups = [("all", f"All {len(table)} {split} images, best first", [r["id"] for r in reversed(table)])]
    else:
        groups = [("best", f"The {EXTREMES} best {split} images", [r["id"] for r in table[::-1][:EXTREMES]]),
                  ("worst", f"The {EXTREMES} worst {split} images", [r["id"] for r in table[:EXTREMES]])]
    images = _overlays(loaded, manifest, split, {i for _, _, ids in groups for i in ids}, None, captions)
    body += _legend()
    for gid, title, ids in groups:
        body += f"<h3>{_e(title)}</h3>" + _grid(images, ids, f"{gid}-images")
    shown = {i for _, _, ids in groups for i in ids}
    rows = [{"id": r["id"], "IoU": r["iou"], "Dice": r["dice"], "mean IoU": r["mean_iou"], "pixel accuracy": r["pixel_acc"],
             "pixels": r["pixels"]} for r in reversed(table) if r["id"] in shown]
    return body + "<h3>Shown images</h3>" + _table(rows, "per-image")


# --- what the campaign teaches -------------------------------------------------------------------------------------

def _campaign_insight(subject: Subject, rows: list[dict[str, Any]], metrics: dict[str, list[dict[str, Any]]]) -> Any:
    """The campaign's :class:`~unet_dist.collect.insight.Insight`, from the metrics the report has read already."""
    from unet_dist.collect.insight import analyse, history

    keys = sorted({k for r in rows for k in (subject.records[r["trial"]].get("params") or {})})
    hist = {r["run_uri"]: history(metrics[r["trial"]], subject.metric) for r in rows}
    return analyse(rows, keys, subject.metric, subject.mode, hist)


def _insight_body(insight: Any, ident: str = "", figures: Sequence[str] = ("parallel", "effects", "pareto")) -> str:
    """What a campaign teaches (:mod:`unet_dist.collect.insight`): what was compared, the importance and effects
    table, and the ``figures`` among parallel coordinates, effect panels and the cost/metric Pareto plot."""
    body = f'<p class="basis">{_e(insight.basis)}.</p>'
    if not insight.keys:
        return body + _note("importance needs 3 compared trials and a searched key that varies")
    if insight.caveat:
        body += _note(insight.caveat)
    table = [{"key": k.key if i == 0 else "", "importance": round(k.importance, 3) if i == 0 else None, "value": e.value,
              "mean": e.mean, "95% interval": f"{e.low:.4f}-{e.high:.4f}", "trials": e.n}
             for k in insight.keys for i, e in enumerate(k.ordered(insight.mode))]
    order = [k.key for k in insight.keys]
    drawn = {"parallel": ("Parallel coordinates: each line a trial, through its searched values (most important "
                          "first) to its metric", lambda: plots.parallel_png(insight.points, order, insight.metric,
                                                                             insight.mode)),
             "effects": ("Effects: the mean metric of each value, its 95% bootstrap interval and trial count",
                         lambda: plots.effects_png(insight.keys, insight.metric, insight.mode)),
             "pareto": (f"Cost: each trial's best metric against its {plots.COSTS[plots.pareto_cost(insight.points)][0]}; "
                        "the Pareto front is the trials nothing beats on both",
                        lambda: plots.pareto_png(insight.points, insight.metric, insight.mode))}
    return body + _table(table, f"importance{ident}") + "".join(
        f'<h3>{_e(caption.split(":")[0])}</h3><p class="hint">{_e(caption.split(": ", 1)[1])}.</p>'
        + _img(draw(), caption, image_id=f"{name}-plot{ident}") for name, (caption, draw) in drawn.items()
        if name in figures)


def _page(title: str, header: str, sections: list[str]) -> str:
    """The self-contained HTML page: inline style, embedded figures, nothing loaded from the network."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body><header><h1>{_e(title)}</h1>{header}</header>"
            + "".join(sections) + f'<footer><p class="note" style="background:#f4f6f8;border-color:#d8dee4">'
            f"Generated {now_iso()} by unet-dist report.</p></footer></body></html>\n")


# --- the report -------------------------------------------------------------------------------------------------

def build_report(uri: str, *, split: str = "test", dataset: str | None = None, storage: StorageConfig | None = None,
                 val_images: int = 4, progress: bool = False) -> Report:
    """Render the report of the run or campaign at ``uri``; ``split`` is the test view's (val if the dataset has none)."""
    subject = open_subject(uri, storage)
    best = best_model(subject)
    report = Report("", subject, best[0] if best else None, best[1].checkpoint if best else None)
    metrics = {k: subject.runs[k].metrics() for k in ranked(subject)}
    series = {run_label(subject.records[k], k): rows for k, rows in metrics.items()}
    full = subject_rows(subject, metrics)
    rows = leaderboard_rows(full)
    top = next((i for i, r in enumerate(rows) if best and r["trial"] == best[0]), None)
    sections = [_section("curves", "Training curves", _img(plots.curves_png(series), "training curves")
                         if any(series.values()) else _note("no epoch has completed yet: metrics.jsonl is empty")),
                _section("leaderboard", "Leaderboard", _table(rows, "leaderboard", top))]
    if subject.kind == "campaign":
        report.insight = _campaign_insight(subject, full, metrics)
        sections.append(_section("insight", "What the campaign teaches", _insight_body(report.insight)))
    if best is None:
        report.notes.append("no run has a complete checkpoint: no predictions and no test view")
        sections.append(_section("test-view", "Test view", _note(report.notes[-1])))
        data_uri = dataset
    else:
        data_uri = _model_sections(report, sections, best[1].checkpoint, split, dataset, storage, val_images, progress)
    report.html = _page(f"unet-dist report: {subject.name}", _meta(subject, best, data_uri), sections)
    return report


def _model_sections(report: Report, sections: list[str], checkpoint: str, split: str, dataset: str | None,
                    storage: StorageConfig | None, val_images: int, progress: bool) -> str:
    """Append the best model's overlays and test view to ``sections``; returns the dataset URI used."""
    from unet_dist.data.manifest import read_manifest
    from unet_dist.inference.evaluate import split_count
    from unet_dist.inference.model import load_model

    loaded = load_model(checkpoint, storage)
    data_uri = dataset or loaded.cfg.data.dataset
    try:
        manifest = read_manifest(data_uri, loaded.cfg.storage)
    except UserError as err:
        report.notes.append(f"{err} (pass --data DATASET to use a copy)")
        sections.append(_section("test-view", "Test view", _note(report.notes[-1])))
        return data_uri
    val = _overlays(loaded, manifest, "val", None, val_images) if split_count(manifest, "val") else {}
    sections.append(_section("overlays", f"Best model on {len(val)} validation images",
                             _legend() + _grid(val, list(val), "val-images") if val else _note("no val images")))
    report.split = split if split_count(manifest, split) else "val"
    view = ""
    if report.split != split:
        report.notes.append(f"no {split} split in {manifest['uri']}: the test view uses val")
        view = _note(f"the dataset has no {split} split: this view uses the validation images, which picked the best "
                     "checkpoint, so expect it to flatter the model")
    view += _test_view(loaded, manifest, report.split, progress)
    title = "Test view" if report.split == "test" else f"Test view ({report.split} split)"
    sections.append(f'<section id="test-view" data-split="{_e(report.split)}"><h2>{_e(title)}</h2>{view}</section>')
    return data_uri


# --- a whole storage: every campaign on one page -------------------------------------------------------------------

OVERVIEW_HIDDEN = HIDDEN_COLUMNS - {"campaign"}


def build_storage_report(uri: str, *, storage: StorageConfig | None = None, **_: Any) -> Report:
    """The overview of every campaign and single run under a storage root: the best so far over time, one leaderboard,
    and per campaign what it teaches (importance and effects). Reads records and metrics only: no checkpoint."""
    from unet_dist.collect.insight import analyse, histories
    from unet_dist.collect.leaderboard import collect, columns

    loc = resolve(uri, storage)
    board = collect(loc, storage=storage, write=False)
    if not board.rows:
        raise StorageError(f"{loc.uri} holds no {CAMPAIGN_RECORD}, no {RUN_RECORD} and no runs under it: pass a run or "
                           "campaign folder (STORAGE/<name>) or a storage root that holds some")
    hist = histories(board.rows, loc, board.metric)
    shown = [c for c in columns(board.rows) if c not in OVERVIEW_HIDDEN]
    better = max if board.mode == "max" else min
    ended = [(r.get("ended_at") or r["updated_at"], better(v for _, v in hist[r["run_uri"]]), r.get("campaign") or
              "single runs") for r in board.rows if hist.get(r["run_uri"]) and (r.get("ended_at") or r.get("updated_at"))]
    sections = [_section("progress", "Best so far", _img(plots.progress_png(ended, board.metric, board.mode),
                                                         "best so far over time", image_id="progress-plot")),
                _section("leaderboard", "Leaderboard", _table([{c: r.get(c) for c in shown} for r in board.rows],
                                                              "leaderboard", 0))]
    for name in dict.fromkeys(r["campaign"] for r in board.rows if r.get("campaign")):
        rows = [r for r in board.rows if r.get("campaign") == name]
        keys = [k for k in board.searched if any(r.get(k) is not None for r in rows)]
        insight = analyse(rows, keys, board.metric, board.mode, hist)
        hint = (f'<p class="hint">{len(rows)} trials; <code>unet-dist report {_e((loc / name).uri)}</code> for its '
                "curves, predictions and test view.</p>")
        sections.append(_section(f"campaign-{name}", f"Campaign {name}", hint + _insight_body(insight, f"-{name}",
                                                                                             ("effects",))))
    subject = Subject("storage", loc, {}, {}, {}, board.metric, board.mode)
    top = board.rows[0]
    report = Report("", subject, f"{top['campaign']}/{top['trial']}" if top.get("campaign") else str(top["trial"]),
                    top.get("best_checkpoint"))
    report.html = _page(f"unet-dist report: {loc.uri}", _storage_meta(board, loc), sections)
    return report


def _storage_meta(board: Any, loc: Location) -> str:
    from unet_dist.collect.leaderboard import sort_value

    top = board.rows[0]
    campaigns = sorted({r["campaign"] for r in board.rows if r.get("campaign")})
    singles = sum(1 for r in board.rows if not r.get("campaign"))
    items = [("kind", "storage"), ("location", _e(loc.uri)), ("metric", _e(f"{board.metric} ({board.mode})")),
             ("runs", _e(board.summary())),
             ("campaigns", _e(", ".join(campaigns) or "–") + (f" · {singles} single run{'s' * (singles != 1)}" if singles else "")),
             ("best", _e(f"{top.get('campaign') or ''}{'/' if top.get('campaign') else ''}{top['trial']}: "
                         f"{board.metric} {_fmt(sort_value(top, board.metric))}")),
             ("best checkpoint", _e(top.get("best_checkpoint") or "–"))]
    return '<table class="meta">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in items) + "</table>"


def is_storage_root(uri: str, storage: StorageConfig | None = None) -> bool:
    """Whether ``uri`` is neither a campaign nor a run folder (a storage root gets the overview)."""
    loc = resolve(uri, storage)
    return not (loc / CAMPAIGN_RECORD).exists() and not (loc / RUN_RECORD).exists()


def write_report(uri: str, output: str, **kwargs: Any) -> Report:
    """Build the report of a run, a campaign or (:func:`build_storage_report`) a whole storage and write it to
    ``output`` (local path or s3://), whole or not at all."""
    build = build_storage_report if is_storage_root(uri, kwargs.get("storage")) else build_report
    report = build(uri, **kwargs)
    resolve(output, kwargs.get("storage")).write_text(report.html)
    return report
