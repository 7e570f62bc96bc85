"""The evaluation report of a model: metrics JSON, PNG plots and one self-contained HTML page.

Written by the trainer into each version's ``report/`` folder before publishing (so the
manifest covers it), and on demand for any published version by :func:`report_version`.
Plots use matplotlib's object API with the Agg canvas: no pyplot, no global state.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from digitserve.server import repository
from digitserve.trainer.data import NUM_CLASSES, load_mnist
from digitserve.trainer.metrics import Evaluation
from digitserve.trainer.settings import ReportSettings

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
HISTORY_PLOT = "history.png"
CONFUSION_PLOT = "confusion_matrix.png"
SAMPLES_PLOT = "samples.png"
MISTAKES_PLOT = "mistakes.png"
HTML_FILE = "index.html"
REPORT_FILES = (METRICS_FILE, HISTORY_PLOT, CONFUSION_PLOT, SAMPLES_PLOT, MISTAKES_PLOT, HTML_FILE)

GRID_COLUMNS = 5
GRID_SIZE = 10


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100, metadata={"Software": None})


def plot_history(history: Sequence[Mapping[str, float]], path: Path) -> None:
    """Training and validation accuracy and loss per epoch."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    epochs = np.arange(1, len(history) + 1)
    for axes, metric in zip(figure.subplots(1, 2), ("accuracy", "loss"), strict=True):
        for prefix, label in (("", "training"), ("val_", "validation")):
            values = [epoch.get(prefix + metric, np.nan) for epoch in history]
            axes.plot(epochs, values, marker="o", label=label)
        axes.set_title(metric)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    _save(figure, path)


def plot_confusion_matrix(matrix: np.ndarray, path: Path) -> None:
    """Counts of true digit (rows) against predicted digit (columns), log-coloured."""
    figure = Figure(figsize=(6.5, 5.5), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(np.log1p(matrix), cmap="Blues")
    threshold = np.log1p(matrix).max() / 2
    for true in range(NUM_CLASSES):
        for predicted in range(NUM_CLASSES):
            count = int(matrix[true, predicted])
            if count:
                colour = "white" if np.log1p(count) > threshold else "black"
                axes.text(
                    predicted, true, str(count), ha="center", va="center", fontsize=8, color=colour
                )
    axes.set_xticks(range(NUM_CLASSES))
    axes.set_yticks(range(NUM_CLASSES))
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    axes.set_title("confusion matrix (test set)")
    figure.colorbar(image, ax=axes, label="log(1 + count)")
    _save(figure, path)


def plot_digits(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    path: Path,
    title: str,
) -> None:
    """Each digit with its true and predicted label above a bar chart of its probabilities."""
    count = len(images)
    rows = max(1, -(-count // GRID_COLUMNS))
    figure = Figure(figsize=(2.2 * GRID_COLUMNS, 3.6 * rows), layout="constrained")
    figure.suptitle(title)
    grid = figure.add_gridspec(2 * rows, GRID_COLUMNS, height_ratios=[1.6, 1] * rows)
    if count == 0:
        axes = figure.add_subplot(grid[:, :])
        axes.text(0.5, 0.5, "none", ha="center", va="center", fontsize=14)
        axes.axis("off")
    for i in range(count):
        row, column = divmod(i, GRID_COLUMNS)
        predicted = int(probabilities[i].argmax())
        image_axes = figure.add_subplot(grid[2 * row, column])
        image_axes.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
        image_axes.set_title(
            f"true {labels[i]}, pred {predicted} ({probabilities[i][predicted]:.2f})",
            fontsize=9,
            color="black" if predicted == labels[i] else "red",
        )
        image_axes.axis("off")
        bar_axes = figure.add_subplot(grid[2 * row + 1, column])
        colours = ["tab:blue"] * NUM_CLASSES
        colours[predicted] = "tab:green" if predicted == labels[i] else "tab:red"
        bar_axes.bar(range(NUM_CLASSES), probabilities[i], color=colours)
        bar_axes.set_ylim(0, 1)
        bar_axes.set_xticks(range(NUM_CLASSES))
        bar_axes.tick_params(labelsize=7)
    _save(figure, path)


def sample_indices(labels: np.ndarray) -> np.ndarray:
    """The first test image of each digit (fewer if a digit is absent)."""
    firsts = [np.flatnonzero(labels == digit)[:1] for digit in range(NUM_CLASSES)]
    return np.concatenate(firsts).astype(np.int64)


def confident_mistakes(evaluation: Evaluation, count: int = GRID_SIZE) -> np.ndarray:
    """Indices of the wrong predictions made with the highest probability, most confident first."""
    wrong = np.flatnonzero(evaluation.predictions != evaluation.labels)
    confidence = evaluation.probabilities[wrong].max(axis=1)
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def _html(title: str, metrics: Mapping[str, Any], metadata: Mapping[str, Any], out: Path) -> str:
    summary = {
        "test accuracy": f"{metrics['accuracy']:.4%}",
        "test loss": f"{metrics['loss']:.4f}",
        "errors": f"{metrics['errors']} of {metrics['examples']}",
        "macro F1": f"{metrics['macro_f1']:.4f}",
    }
    for key in ("architecture", "trained_at", "parameter_count", "wall_time_seconds"):
        if key in metadata:
            summary[key.replace("_", " ")] = str(metadata[key])
    for key, value in sorted(metadata.get("training_parameters", {}).items()):
        summary[key.replace("_", " ")] = str(value)
    summary_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary.items()
    )
    class_rows = "".join(
        f"<tr><td>{row['digit']}</td><td>{row['precision']:.4f}</td><td>{row['recall']:.4f}</td>"
        f"<td>{row['f1']:.4f}</td><td>{row['support']}</td></tr>"
        for row in metrics["per_class"]
    )
    history = (
        _embed(out / HISTORY_PLOT)
        if (out / HISTORY_PLOT).exists()
        else "<p>No training history recorded.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<table>{summary_rows}</table>
<h2>Training history</h2>
{history}
<h2>Per-digit precision, recall and F1 (test set)</h2>
<table><tr><th>digit</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{class_rows}</table>
<h2>Confusion matrix</h2>
{_embed(out / CONFUSION_PLOT)}
<h2>Sample test digits</h2>
{_embed(out / SAMPLES_PLOT)}
<h2>Most confident mistakes</h2>
{_embed(out / MISTAKES_PLOT)}
<p>Data files in <code>{METRICS_FILE}</code> beside this page.</p>
</body>
</html>
"""


def write_report(
    out: Path,
    *,
    evaluation: Evaluation,
    images: np.ndarray,
    metadata: Mapping[str, Any],
    title: str,
) -> list[Path]:
    """Write every report file into ``out`` (created if needed); return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluation.to_json()
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    history = metadata.get("history") or []
    if history:
        plot_history(history, out / HISTORY_PLOT)
    plot_confusion_matrix(evaluation.confusion_matrix(), out / CONFUSION_PLOT)
    samples = sample_indices(evaluation.labels)
    plot_digits(
        images[samples],
        evaluation.labels[samples],
        evaluation.probabilities[samples],
        out / SAMPLES_PLOT,
        "first test image of each digit",
    )
    mistakes = confident_mistakes(evaluation)
    plot_digits(
        images[mistakes],
        evaluation.labels[mistakes],
        evaluation.probabilities[mistakes],
        out / MISTAKES_PLOT,
        "most confident mistakes",
    )
    (out / HTML_FILE).write_text(_html(title, metrics, metadata, out), encoding="utf-8")
    written = [out / name for name in REPORT_FILES if (out / name).exists()]
    logger.info("wrote report %s", out / HTML_FILE)
    return written


def report_version(settings: ReportSettings) -> Path:
    """Evaluate a published version on the test set and write its report; return the folder."""
    from digitserve.trainer.export import ExportedModel  # TensorFlow: only when needed

    repo, model = settings.model_repo, settings.model_name
    version = settings.version
    if version is None:
        versions = repository.list_versions(repo, model)
        if not versions:
            raise repository.RepositoryError(f"no published version of {model!r} in {repo}")
        version = versions[-1]
    version_dir = repo / model / str(version)
    if not version_dir.is_dir():
        raise repository.RepositoryError(f"{model!r} has no version {version} in {repo}")
    manifest = repository.verify_version(version_dir)
    data = load_mnist(settings.data_dir)
    recorded = manifest.metadata.get("data_checksums") or {}
    if recorded.keys() == data.checksums.keys() and recorded != data.checksums:
        logger.warning("the test data differs from the data version %d was trained on", version)
    evaluation = Evaluation(
        labels=data.test_labels.astype(np.int64),
        probabilities=ExportedModel(version_dir).predict(data.test_images),
    )
    out = settings.out or Path(f"report-{model}-{version}")
    architecture = manifest.metadata.get("architecture", "unknown architecture")
    write_report(
        out,
        evaluation=evaluation,
        images=data.test_images,
        metadata=manifest.metadata,
        title=f"{model} version {version} ({architecture})",
    )
    return out
