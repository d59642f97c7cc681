#!/usr/bin/env python3
"""Time ``clusterpki render`` as a whole process against ``openssl_pki.sh`` making the same PKI.

Both run in the same session, alternating, so the ratio is fair on a noisy machine. Usage:
    python bench/render_vs_openssl.py [--runs N] [--clusterpki PATH]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC = """apiVersion: pki.clusterpki.dev/v1alpha1
kind: ClusterPKI
metadata: {{name: bench}}
spec: {{keyAlgorithm: {algorithm}}}
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--clusterpki", default=shutil.which("clusterpki") or str(Path(sys.executable).parent / "clusterpki"))
    args = parser.parse_args()

    print(f"{'keys':<11} {'openssl script':>15} {'clusterpki render':>18} {'speed-up':>9}   (median of {args.runs} runs)")
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm, script_alg in (("ECDSA-P256", "ecdsa"), ("RSA-2048", "rsa")):
            spec_file = Path(tmp) / f"{algorithm}.yaml"
            spec_file.write_text(SPEC.format(algorithm=algorithm))
            ours, theirs = [], []
            for run in range(args.runs):
                out = Path(tmp) / f"{algorithm}-{run}"
                theirs.append(timed(["bash", str(HERE / "openssl_pki.sh"), str(out / "openssl"), script_alg]))
                ours.append(timed([args.clusterpki, "render", "-f", str(spec_file), "--out", str(out / "ours")]))
            o, t = statistics.median(ours), statistics.median(theirs)
            ratios[algorithm] = t / o
            print(f"{algorithm:<11} {t:>14.3f}s {o:>17.3f}s {t / o:>8.1f}x")
    print("headline: render is " + ", ".join(f"{r:.1f}x ({a})" for a, r in ratios.items())
          + " faster than the openssl CLI script")


if __name__ == "__main__":
    main()
