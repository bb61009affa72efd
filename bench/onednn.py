"""Is the oneDNN rule right on this machine? Times Lite0's forward pass with TensorFlow's oneDNN kernels on and off.

transfer turns the kernels on for every x86-64 CPU (transfer/runtime/_onednn.py says where that was measured);
run this on a new kind of machine and add its line there if the answer differs:

    python bench/onednn.py [--rounds 4]
"""

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transfer.runtime import _onednn, cores, cpu_name  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=_onednn.ROUNDS)
    args = parser.parse_args()
    answer = _onednn.measure(rounds=args.rounds)
    rule = _onednn.choice()
    print(json.dumps({"cpu": f"{cpu_name()} x{cores()} ({platform.machine()})", **answer,
                      "rule": {"1": "on", None: "TensorFlow's default"}[rule],
                      "rule_agrees": rule is None or answer["on"]}, indent=1))


if __name__ == "__main__":
    main()
