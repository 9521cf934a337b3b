"""The fuzz benchmark: label configs x model answers through the real converters and the pipeline's
validation; prints the counts of invalid regions and exceptions (both must be 0).

    .venv/bin/python benchmarks/fuzz.py --cases 10000 [--seed 1]

The generators and the checks live in tests/fuzz_cases.py, which the suite runs on a smaller sample.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fuzz_cases import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
