"""bench/pfs_bench.py at a small scale: the slow-metadata FUSE server it compiles and mounts
counts real operations, and the module tree imported from a SIF (run with satchel exec as the
non-root user) costs a small fraction of the directory's metadata operations and time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.slow


def test_pfs_bench_small(test_user, tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "pfs_bench.py"),
                           "--modules", "200", "--parallel", "1,2", "--delay-us", "300",
                           "--user", test_user.name, "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["case"], r["interpreters"]): r for r in json.loads(out.read_text())["results"]}
    for n in (1, 2):
        d, s = rows[("directory", n)], rows[("sif", n)]
        # every module costs several lookups/getattrs/opens on the directory...
        assert d["metadata_ops"] > 200 * 5 * n
        assert d["ops"]["open"] >= 200 * n
        # ...and the image is opened once per container, whatever it holds
        assert s["metadata_ops"] * 10 <= d["metadata_ops"]
        assert s["ops"]["read"] > 0
        assert s["wall_s"] < d["wall_s"]
    assert "SIF needs" in proc.stdout
