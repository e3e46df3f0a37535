"""Which digits a classifier gets wrong: the confusion matrix on the test split, per-class accuracy, and
the figure of both. Pure functions; tracking logs what they return."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Of each true class, the fraction classified right (recall); NaN for a class with no example."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


def most_confused_with(matrix: np.ndarray) -> np.ndarray:
    """Per true class, the wrong class it is most often taken for."""
    wrong = matrix.copy()
    np.fill_diagonal(wrong, -1)
    return wrong.argmax(axis=1)


def confusion_figure(matrix: np.ndarray, title: str) -> Figure:
    """The confusion matrix as a heat map, each true class's accuracy in its row label."""
    accuracy = per_class_accuracy(matrix)
    figure = Figure(figsize=(7, 6), layout="constrained")
    ax = figure.subplots()
    ConfusionMatrixDisplay(matrix).plot(ax=ax, colorbar=False, values_format="d", cmap="Blues")
    ax.set_yticks(range(len(matrix)), labels=[f"{k}  ({a:.0%})" for k, a in enumerate(accuracy)])
    ax.set_ylabel("true class (its accuracy)")
    ax.set_title(title)
    return figure
