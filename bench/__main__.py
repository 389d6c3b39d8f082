"""`python -m bench`: every benchmark in sequence (store, then serving).

`python -m bench --quick` runs both as smoke runs (few repeats, a small serving model).
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = {
    "bench.store_bench": ["--repeat", "2", "--fresh-repeat", "1", "--batches", "5"],
    "bench.serving_bench": ["--quick"],
}


def main() -> int:
    quick = sys.argv[1:] == ["--quick"]
    if sys.argv[1:] and not quick:
        print("usage: python -m bench [--quick]", file=sys.stderr)
        return 2
    failed = []
    for module, quick_args in BENCHES.items():
        print(f"\n=== python -m {module}\n", flush=True)
        # One process per bench: each owns its database, workers and module state.
        code = subprocess.run([sys.executable, "-m", module, *(quick_args if quick else [])]
                              ).returncode
        if code:
            failed.append(module)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
