"""The settings of one search: a pipeline file's ``optimize:`` section with command-line options on top."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from optkit.config.optimize import OptimizeSpec
from optkit.errors import PipelineError

__all__ = ["merged_settings"]


def merged_settings(section: OptimizeSpec | None, overrides: dict[str, Any]) -> OptimizeSpec:
    """``section`` (or the defaults) with every override that is not ``None``.

    Raises:
        PipelineError: an override the settings refuse, named as its command-line option.
    """
    data = section.model_dump(exclude_unset=True) if section is not None else {}
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return OptimizeSpec.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "--" + "-".join(str(part) for part in error["loc"]).replace("_", "-")
        raise PipelineError(f"{option}: {error['msg']}") from None
