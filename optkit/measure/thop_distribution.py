"""Which distribution owns the importable ``thop`` package: optkit's validated one or Ultralytics'.

Two distributions install the same folder ``thop/``:

* ``thop`` (Lyken17/pytorch-OpCounter, MIT): what optkit depends on and validated its counts with;
* ``ultralytics-thop`` (AGPL-3.0): installed by ``pip install ultralytics``.

Whichever pip installed last owns the files in a shared site-packages (across site-packages, the
first on ``sys.path`` wins). ``importlib.metadata.packages_distributions()`` lists both names for
``thop`` and cannot tell; the sha256 hashes in each distribution's ``RECORD`` can. optkit only
takes the convolution, linear and recurrent formulas from thop (:data:`~optkit.measure.mac_rules.THOP_COUNTED`),
which both distributions share, so its counts do not change; Ultralytics' own ``get_flops`` does
(it returns 0.0 with the Lyken17 files, whose ``profile`` lacks its ``stride`` argument).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ThopOwner", "thop_owner", "thop_warning", "VALIDATED_THOP"]

#: The thop distribution and version optkit's MAC counts were validated with.
VALIDATED_THOP = ("thop", "0.1.1.post2209072238")


@dataclass
class ThopOwner:
    """Where ``import thop`` would load from, and whose files those are.

    Attributes:
        origin: the ``thop/__init__.py`` that would be imported (``None``: thop is not installed).
        owner: the distribution whose ``RECORD`` hashes match that file (``None``: none does).
        version: the owner's version.
        license: the owner's declared license.
        claimants: every installed distribution that lists ``thop/__init__.py``: ``name``,
            ``version``, ``license``, ``folder``, ``intact`` (its files all match its hashes) and
            ``imported`` (it installed into the folder that is imported).
        mixed: some of the owner's own files were overwritten by another distribution.
    """

    origin: str | None
    owner: str | None = None
    version: str | None = None
    license: str | None = None
    claimants: list[dict[str, Any]] = field(default_factory=list)
    mixed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "owner": self.owner, "version": self.version, "license": self.license, "mixed": self.mixed}


def _sha256(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


def _recorded_hashes(dist: metadata.Distribution) -> dict[str, str]:
    """``{relative path: sha256}`` of a distribution's ``thop/*.py`` files."""
    hashes = {}
    for entry in dist.files or []:
        path = str(entry).replace("\\", "/")
        if path.startswith("thop/") and path.endswith(".py") and entry.hash is not None and entry.hash.mode == "sha256":
            hashes[path] = entry.hash.value
    return hashes


def thop_owner() -> ThopOwner:
    """Find which distribution's files ``import thop`` would load, without importing it."""
    spec = importlib.util.find_spec("thop")
    if spec is None or not spec.origin:
        return ThopOwner(origin=None)
    folder = Path(spec.origin).resolve().parent
    result = ThopOwner(origin=str(Path(spec.origin).resolve()))
    owners_by_file: dict[str, set[str]] = {}
    seen: set[tuple[str, str]] = set()
    for dist in metadata.distributions():
        hashes = _recorded_hashes(dist)
        if "thop/__init__.py" not in hashes:
            continue
        name, where = dist.metadata["Name"], Path(str(dist.locate_file("thop"))).resolve()
        if (name, str(where)) in seen:
            continue
        seen.add((name, str(where)))
        matching = {rel for rel, digest in hashes.items() if (where.parent / rel).is_file() and _sha256(where.parent / rel) == digest}
        result.claimants.append(
            {
                "name": name,
                "version": dist.version,
                # The PackageMetadata protocol of typeshed for 3.11 lacks get(); the email.message object has it.
                "license": dist.metadata.get("License-Expression") or dist.metadata.get("License"),  # type: ignore[attr-defined]
                "folder": str(where),
                "intact": matching == set(hashes),
                "imported": where == folder,
            }
        )
        if where == folder:
            for rel in matching:
                owners_by_file.setdefault(rel, set()).add(name)
    init_owners = owners_by_file.get("thop/__init__.py", set())
    if len(init_owners) == 1:
        result.owner = next(iter(init_owners))
        claimant = next(c for c in result.claimants if c["name"] == result.owner and c["imported"])
        result.version, result.license = claimant["version"], claimant["license"]
        result.mixed = not claimant["intact"]
    return result


def _same_version(found: str | None, wanted: str) -> bool:
    """Equal after normalisation (the validated thop's METADATA says ``0.1.1-2209072238``)."""
    from packaging.version import InvalidVersion, Version

    if found is None:
        return False
    try:
        return Version(found) == Version(wanted)
    except InvalidVersion:
        return found == wanted


def thop_warning(owner: ThopOwner | None = None) -> str | None:
    """A one-line warning when the importable thop is not the validated one, else ``None``."""
    owner = owner if owner is not None else thop_owner()
    name, version = VALIDATED_THOP
    if owner.origin is None:
        return f"thop is not installed: optkit needs {name} {version} (pip install 'thop=={version}')"
    if owner.owner == name and _same_version(owner.version, version) and not owner.mixed:
        return None
    others = ", ".join(f"{c['name']} {c['version']}" for c in owner.claimants if c["name"] != owner.owner)
    what = f"{owner.owner} {owner.version} ({owner.license})" if owner.owner else "files no installed distribution fully owns"
    if owner.mixed:
        what += ", partly overwritten by another distribution"
    return (
        f"the installed thop ({owner.origin}) is {what}, not the {name} {version} optkit's MAC counts were "
        f"validated with"
        + (f"; also installed: {others}" if others else "")
        + ". optkit's totals do not change (it uses only the conv, linear and RNN formulas both share); see 'thop and Ultralytics' in docs/explanation/macs.md"
    )
