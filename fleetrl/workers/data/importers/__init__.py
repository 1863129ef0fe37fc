"""Offline data import: folders of our own episode files and LeRobot datasets (v2.x, v3.0) -> ``Episode``s.

Both readers return every episode of the source or raise ``DatasetImportError`` (a ``ValueError`` whose
message names the file and what is wrong) before returning any: nothing is half-imported. The caller
stores the result, e.g. with ``import_into_store``. numpy/pyarrow/pydantic only (no Ray, no torch).

``fleetrl_folder.py`` reads our own format, ``lerobot.py`` LeRobot's (its layout and the mapping to an
``Episode`` are described there); ``common.py`` holds what both share.
"""

from fleetrl.workers.data.importers.common import DatasetImportError, import_into_store
from fleetrl.workers.data.importers.fleetrl_folder import import_fleetrl_folder
from fleetrl.workers.data.importers.lerobot import import_lerobot

__all__ = ["DatasetImportError", "import_fleetrl_folder", "import_into_store", "import_lerobot"]
