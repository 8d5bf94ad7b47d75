"""Demo step: pick an essay task of the example tree and ask docwatch for its latest ok essay.

python examples/show_latest.py DATA_ROOT
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path


def main(data_root: Path) -> int:
    docwatch = shutil.which("docwatch") or str(Path(sys.executable).parent / "docwatch")
    with open(data_root / "2_tasks/essay_generation_tasks.csv", newline="") as fh:
        tasks = [row["essay_task_id"] for row in csv.DictReader(fh)]
    for task in tasks:
        cmd = [docwatch, "latest", "essay", task, "--data-root", str(data_root)]
        found = subprocess.run([*cmd, "--field", "doc_dir"], capture_output=True, text=True)
        if found.returncode == 0:
            print("$ docwatch latest essay", task, "--data-root", data_root)
            subprocess.run(cmd, check=True)
            text = subprocess.run([*cmd, "--field", "parsed"], capture_output=True, check=True)
            print("--- first lines of its parsed.txt ---")
            print("\n".join(text.stdout.decode(errors="replace").splitlines()[:3]))
            return 0
    print("no essay task has an ok document", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
