"""CAMs on disk: the pickle-free per-image file format and importers for other code bases' dumps."""

from wsss.cams import extractors  # noqa: F401  (registers CAM extractors)
from wsss.cams.files import CamRecord, cam_path, is_complete, load_cam, save_cam, save_record

__all__ = ["CamRecord", "cam_path", "is_complete", "load_cam", "save_cam", "save_record"]
