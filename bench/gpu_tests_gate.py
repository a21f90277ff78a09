"""Whether the GPU tests proved anything: pytest's JUnit XML read, skips counted.

    python bench/gpu_tests_gate.py RESULT.xml

pytest exits 0 when every test it selected was skipped, so "pytest passed" says nothing
on a machine where the GPU tests could not run. This gate passes only when at least one
test ran and passed and none failed or errored; it prints one line of counts and, for
skips, each distinct reason. Run by bench/gpu_check.sh on the file pytest --junitxml wrote.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path


def count(xml: Path) -> tuple[Counter, Counter]:
    """(outcomes: passed/failed/error/skipped, skip reasons) of every test case in a JUnit XML file."""
    outcomes, reasons = Counter(), Counter()
    for case in ET.parse(xml).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is not None:
            outcomes["skipped"] += 1
            reasons[(skipped.get("message") or "no reason given").strip()] += 1
        elif case.find("failure") is not None:
            outcomes["failed"] += 1
        elif case.find("error") is not None:
            outcomes["error"] += 1
        else:
            outcomes["passed"] += 1
    return outcomes, reasons


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    xml = Path(argv[0])
    try:
        outcomes, reasons = count(xml)
    except (OSError, ET.ParseError) as e:
        print(f"GPU tests: no readable result in {xml} ({e}): nothing was proven")
        return 1
    total = sum(outcomes.values())
    line = ", ".join(f"{outcomes[k]} {k}" for k in ("passed", "failed", "error", "skipped"))
    for reason, n in reasons.items():
        print(f"  skipped {n}: {reason}")
    if outcomes["failed"] or outcomes["error"]:
        print(f"GPU tests: {line}: FAILED")
        return 1
    if not outcomes["passed"]:
        why = f"all {total} were skipped" if total else "none was collected"
        print(f"GPU tests: {line}: {why}, so nothing on the GPU was proven")
        return 1
    print(f"GPU tests: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
