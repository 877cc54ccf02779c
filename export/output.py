"""Writing the output folder all at once: a failed export leaves --out exactly as it was.

Everything is written to a hidden folder beside --out (same file system, so renames are cheap
and atomic) and swapped in only after the parity gate has passed.
"""

import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from export.errors import OutputError


@contextmanager
def staged_output(out: Path, names: Collection[str]) -> Iterator[Path]:
    """A fresh folder to write the export into; it replaces `out` only if the block succeeds.

    `names` are the files `out` may hold: any other file there is someone else's, and stops it.
    """
    _check_target(out, names)
    target = out.resolve()
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        # mkdtemp makes a private folder; the published one gets the usual permissions.
        stage.chmod(0o777 & ~_umask())
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create a folder beside it: {exc}") from None
    try:
        yield stage
        _swap_in(stage, target)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write the export: {exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_target(out: Path, names: Collection[str]) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder")
    if not out.resolve().parent.is_dir():
        raise OutputError(f"--out {out}: its parent folder does not exist")
    if out.is_dir():
        foreign = sorted(path.name for path in out.iterdir() if path.name not in names)
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise OutputError(
                f"--out {out}: refusing to replace a folder that holds files the export does "
                f"not write: {', '.join(foreign[:3])}{more}"
            )


def _swap_in(stage: Path, target: Path) -> None:
    """Rename `stage` to `target`; an existing `target` comes back if the rename fails."""
    if not target.exists():
        stage.rename(target)
        return
    previous = stage.with_name(f"{stage.name}.previous")
    target.rename(previous)
    try:
        stage.rename(target)
    except OSError:
        previous.rename(target)
        raise
    shutil.rmtree(previous)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
