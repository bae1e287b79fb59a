"""Evaluation: confusion matrices, metrics, the one-pass background-threshold sweep, folder runners.

The plot lives in ``wsss.eval.plot`` and is not imported here, so importing the metrics stays cheap.
"""

from wsss.eval.confusion import ConfusionMatrix, confusion_matrix
from wsss.eval.metrics import MEAN_CONVENTIONS, format_table, iou_per_class, mean_iou, scores
from wsss.eval.runner import evaluate_cam_dir, evaluate_label_dir, read_name_list
from wsss.eval.sweep import ORACLE_LABEL, FixedThreshold, ThresholdSweep, cam_to_label, threshold_range

__all__ = [
    "MEAN_CONVENTIONS",
    "ORACLE_LABEL",
    "ConfusionMatrix",
    "FixedThreshold",
    "ThresholdSweep",
    "cam_to_label",
    "confusion_matrix",
    "evaluate_cam_dir",
    "evaluate_label_dir",
    "format_table",
    "iou_per_class",
    "mean_iou",
    "read_name_list",
    "scores",
    "threshold_range",
]
