"""Find the data directory, and say everywhere we looked when it is not there.

Order: an explicit argument, then ``$ROADSIDE_DATA``, then ``../shared/data`` beside the
repository. A source that is *given* (argument or environment variable) is authoritative:
when it is wrong we raise instead of falling through to the next one, because silently
training on a different directory than the one asked for is worse than stopping.

With ``subdir`` (e.g. ``"urbansound8k"``) a candidate may be either the data root that
contains ``subdir/`` or that sub-folder itself (users pass both); the dataset module
tells which folders look like its own through ``is_subdir``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

ENV_VAR = "ROADSIDE_DATA"
# datasets/ -> compression/ -> repository root; the shared data sits beside the repository.
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"


class DataDirError(FileNotFoundError):
    """No usable data directory; the message lists every place that was checked."""


def resolve_data_dir(arg: str | Path | None, subdir: str | None = None, *,
                     is_subdir: Callable[[Path], bool] | None = None) -> Path:
    """The data directory (or its ``subdir``) as an absolute path, or raise DataDirError.

    ``is_subdir(path)`` says whether ``path`` itself is a ``subdir`` folder (for instance
    it holds ``fold1/``); a folder simply named ``subdir`` is accepted too.
    """
    if arg is not None and str(arg) != "":
        source, candidate = "argument", Path(arg)
    elif os.environ.get(ENV_VAR):
        source, candidate = f"${ENV_VAR}", Path(os.environ[ENV_VAR])
    else:
        source, candidate = "default (../shared/data beside the repository)", DEFAULT_DATA

    found, looked = _check(candidate.expanduser(), subdir, is_subdir)
    if found is not None:
        return found.resolve()

    lines = [f"no data directory found{f' for {subdir!r}' if subdir else ''}; looked at:"]
    if source != "argument":
        lines.append("  - argument: not given")
    if source.startswith("default"):
        lines.append(f"  - ${ENV_VAR}: not set")
    lines += [f"  - {source}: {what}" for what in looked]
    lines.append(f"pass the data directory explicitly or set {ENV_VAR}")
    raise DataDirError("\n".join(lines))


def _check(candidate: Path, subdir: str | None,
           is_subdir: Callable[[Path], bool] | None) -> tuple[Path | None, list[str]]:
    """(the directory to use or None, what was checked and why it failed)."""
    if not candidate.is_dir():
        state = "is not a directory" if candidate.exists() else "does not exist"
        return None, [f"{candidate} ({state})"]
    if subdir is None:
        return candidate, []
    inside = candidate / subdir
    if inside.is_dir():
        return inside, []
    if candidate.name == subdir or (is_subdir is not None and is_subdir(candidate)):
        return candidate, []
    return None, [f"{inside} (no {subdir}/ folder there)",
                  f"{candidate} (not itself a {subdir} folder either)"]
