"""Strip outputs, execution counts and run metadata from notebooks before committing.

    python scripts/strip_notebooks.py                  # every notebooks/*.ipynb, in place
    python scripts/strip_notebooks.py --check          # exit 1 if any notebook has outputs
    python scripts/strip_notebooks.py path/to/x.ipynb  # only these

``tests/test_notebooks.py`` fails on a notebook stored with outputs. (nbstripout does the
same job as a git filter; this script needs only nbformat, which the dev extra installs.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
KEEP_NB_METADATA = ("kernelspec", "language_info")


def strip(nb: nbformat.NotebookNode) -> bool:
    """Strip ``nb`` in place; returns whether anything changed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count = [], None
            changed = True
        for key in ("execution", "collapsed", "scrolled", "ExecuteTime"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
    extra = [k for k in nb.metadata if k not in KEEP_NB_METADATA]
    for key in extra:
        del nb.metadata[key]
    if "language_info" in nb.metadata and set(nb.metadata.language_info) != {"name"}:
        nb.metadata.language_info = {"name": nb.metadata.language_info.get("name", "python")}
        changed = True
    return changed or bool(extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", type=Path)
    p.add_argument("--check", action="store_true", help="report only; exit 1 if any would change")
    args = p.parse_args(argv)
    paths = args.paths or sorted(NOTEBOOKS.glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            dirty.append(path)
            if not args.check:
                nbformat.write(nb, path)
    verb = "has outputs" if args.check else "stripped"
    for path in dirty:
        print(f"{path}: {verb}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
