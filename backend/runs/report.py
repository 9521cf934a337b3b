"""`lsllm report`: live agreement of one project as a self-contained HTML page.

The page holds the same figures as GET /projects/<id>/quality (backend.learning.agreement, read from
the store the backend uses) as tables, and PNG plots (matplotlib, Agg) embedded as base64: how the
model's agreement with reviewers moved across model versions and as the project's examples grew, and
a reliability diagram of the prediction scores. Inline CSS, no external files, nothing fetched.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from backend.learning.agreement import ReviewOutcome, headline, quality_report

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 980px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
p.note { color: #555; font-size: .9em; }
"""


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_f(v)}</td>' for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary_row(label: Any, s: Mapping[str, Any]) -> list[Any]:
    main = headline(s)
    cal = s["calibration"]
    return [label, s["reviews"], s["accepted_share"], main[1] if main else None, cal["ece"], cal["auroc"],
            cal["errors_in_lowest_20"]]


SUMMARY_HEADERS = ["", "reviews", "accepted unchanged", "accuracy / span F1", "ECE", "AUROC",
                   "errors in lowest 20%"]


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return '<img alt="plot" src="data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode() + '">'


def _rolling(outcomes: Sequence[ReviewOutcome]) -> tuple[list[int], list[float], list[float]]:
    """Reviews in arrival order of the examples count: the examples count, and the accepted and right
    shares over a trailing window (a tenth of the reviews, at least 5)."""
    ordered = sorted(outcomes, key=lambda o: o.examples_before)
    window = max(5, len(ordered) // 10)
    xs, accepted, right = [], [], []
    for i in range(len(ordered)):
        part = ordered[max(0, i + 1 - window): i + 1]
        xs.append(ordered[i].examples_before)
        accepted.append(sum(o.accepted for o in part) / len(part))
        right.append(sum(o.right for o in part) / len(part))
    return xs, accepted, right


def plots(report: Mapping[str, Any], outcomes: Sequence[ReviewOutcome]) -> list[str]:
    """The page's plots as <img> tags with inline PNG data (none without reviews)."""
    if not outcomes:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    versions = report["model_versions"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = list(range(len(versions)))
    ax.plot(xs, [v["accepted_share"] for v in versions], "o-", label="accepted unchanged")
    mains = [headline(v) for v in versions]
    if any(m is not None for m in mains):
        ax.plot(xs, [m[1] if m and m[1] is not None else math.nan for m in mains], "s--", label="accuracy / span F1")
    ax.set_xticks(xs, [f"{v['model_version']}\n({v['reviews']} reviews)" for v in versions], fontsize=7,
                  rotation=20, ha="right")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Agreement with reviewers by model version")
    ax.legend(loc="lower right", fontsize=8)
    images.append(_png(fig))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.6))
    x, acc, right = _rolling(outcomes)
    ax.plot(x, acc, "-", label="accepted unchanged (rolling)")
    ax.plot(x, right, "--", label="prediction right (rolling)")
    ax.set_xlabel("examples the project had learnt when the review arrived")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Agreement as examples grew")
    ax.legend(loc="lower right", fontsize=8)
    images.append(_png(fig))
    plt.close(fig)

    bins = report["overall"]["calibration"]["bins"]
    if bins:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.bar([b["confidence"] for b in bins], [b["accuracy"] for b in bins], width=0.08, alpha=0.7)
        for b in bins:
            ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7, ha="center", va="bottom")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("prediction score (bin mean)")
        ax.set_ylabel("share right")
        ax.set_title("Reliability of the score")
        images.append(_png(fig))
        plt.close(fig)
    return images


def render(project_id: str, outcomes: Sequence[ReviewOutcome], versions_order: Sequence[str]) -> str:
    """The whole HTML page for a project's review outcomes."""
    report = quality_report(project_id, outcomes, versions_order)
    overall = report["overall"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>lsllm quality: project {html.escape(project_id)}"
        f"</title><style>{CSS}</style></head><body>",
        f"<h1>Agreement of predictions with reviewers — project {html.escape(project_id)}</h1>",
        "<p class='note'>A review is an annotation made from a prediction. Accepted unchanged: the reviewer "
        "kept the prediction's result. Accuracy (choices) and strict span F1 (labels) treat the review as the "
        "gold. ECE (10 bins), AUROC of the score for 'prediction right', and the share of all errors among "
        "the 20% lowest-scored predictions use each prediction's score.</p>",
    ]
    if not outcomes:
        parts.append("<p>No reviews of predictions recorded yet.</p></body></html>")
        return "".join(parts)
    parts.append("<h2>Summary</h2>")
    rows = [_summary_row("all reviews", overall)]
    rows += [_summary_row(v["model_version"], v) for v in report["model_versions"]]
    parts.append(_table(SUMMARY_HEADERS, rows))
    parts.append("<h2>By examples learnt</h2>")
    rows = [_summary_row(f"{b['examples_from']}–{b['examples_to'] if b['examples_to'] is not None else ''}", b)
            for b in report["by_examples"]]
    parts.append(_table(["examples"] + SUMMARY_HEADERS[1:], rows))
    parts.extend(plots(report, outcomes))
    parts.append("<h2>Per control and label (all reviews)</h2>")
    for name, control in overall["controls"].items():
        if control["type"] == "choices":
            parts.append(f"<p><b>{html.escape(name)}</b> (choices): {control['reviews']} reviews, accuracy "
                         f"{_f(control['accuracy'])}, macro-F1 {_f(control['macro_f1'])}</p>")
        else:
            parts.append(f"<p><b>{html.escape(name)}</b> (spans): {control['reviews']} reviews, precision "
                         f"{_f(control['precision'])}, recall {_f(control['recall'])}, F1 {_f(control['f1'])}</p>")
        parts.append(_table(
            ["label", "precision", "recall", "F1", "tp", "fp", "fn"],
            [[label, s["precision"], s["recall"], s["f1"], s["tp"], s["fp"], s["fn"]]
             for label, s in control["per_label"].items()],
        ))
    parts.append("</body></html>")
    return "".join(parts)
