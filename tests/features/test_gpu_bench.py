"""bench/gpu.py --smoke: the one-call GPU check keeps working between GPU sessions (CPU, tiny sizes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_gpu_bench_smoke_prints_both_tables(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # the extraction row: encoder, device, precision, batch 4, then positive patches/s
    row = next(line for line in out.splitlines() if line.startswith("resnet50_trunc "))
    values = row.split()
    assert values[1:4] == ["cpu", "fp32", "4"]
    assert float(values[6]) > 0 and float(values[7]) > 0
    # one MIL row per method of the paper's Table 6, with the paper's figures beside ours
    rows = re.findall(
        r"^\| (\w+) \| fp32 \| ([\d.]+) \| nan \| ([\d.]+) \| ([\d.]+) \|$", out, re.M
    )
    assert [r[0] for r in rows] == ["abmil", "mhim_abmil", "transmil", "mhim_transmil"]
    assert [(r[2], r[3]) for r in rows] == [
        ("3.1", "2.3"),
        ("4.3", "2.8"),
        ("13.2", "10.6"),
        ("10.5", "5.6"),
    ]
    assert all(float(r[1]) > 0 for r in rows)
