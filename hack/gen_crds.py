"""Write the CRDs generated from operator/strata_operator/models.py (run by `make crds`).

    .venv/bin/python hack/gen_crds.py           # write crds/, the chart's files/crds/ and manifests/base/crds/
    .venv/bin/python hack/gen_crds.py --check   # exit 1 if the checked-in files drifted
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from strata_operator.crdgen import rendered_files

ROOT = Path(__file__).resolve().parent.parent
# The chart renders its copy as templates (charts/strata/templates/crds.yaml), so helm upgrade updates them.
TARGETS = [ROOT / "crds", ROOT / "charts" / "strata" / "files" / "crds", ROOT / "manifests" / "base" / "crds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    drifted = []
    for name, text in rendered_files().items():
        for target in TARGETS:
            path = target / name
            current = path.read_text(encoding="utf-8") if path.exists() else None
            if current == text:
                continue
            drifted.append(path.relative_to(ROOT))
            if not args.check:
                target.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for path in drifted:
        print(f"{'drifted' if args.check else 'wrote'}: {path}")
    return 1 if (args.check and drifted) else 0


if __name__ == "__main__":
    sys.exit(main())
