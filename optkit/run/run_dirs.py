"""Run folders: where a run writes, never silently over an earlier run (no torch needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

from optkit.errors import PipelineError

__all__ = ["prepare_run_dir"]


def prepare_run_dir(folder: Path, overwrite: bool = False) -> Path:
    """The run folder to use; a previous run's report is never silently overwritten.

    An earlier run in ``folder`` makes it ``folder-2`` (then ``-3``, ...) unless ``overwrite``,
    which clears that earlier run. A non-empty folder that is not a run folder is refused.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"output {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / "report.json").exists():
            raise PipelineError(f"output {folder} is not empty and holds no optkit run; choose another --output")
        if overwrite:
            shutil.rmtree(folder)
        else:
            n = 2
            while (candidate := folder.with_name(f"{folder.name}-{n}")).exists():
                n += 1
            folder = candidate
    folder.mkdir(parents=True, exist_ok=True)
    return folder
