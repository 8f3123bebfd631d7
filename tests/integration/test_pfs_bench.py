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


@pytest.mark.parametrize("revalidate", [False, True], ids=["reads-free", "read-revalidate"])
def test_slowfs_read_model(tmp_path, revalidate):
    """The benches' model of a parallel file system (pfs_slowfs.c): a read of a file already
    open asks the metadata server nothing, as on Lustre or GPFS; with --read-revalidate
    (PFS_SLOWFS_READ_REVALIDATE=1, FUSE auto_inval_data) reads spread over time each pay a
    getattr. fuse2fs reads its overlay image so (bench/overlay_bench)."""
    import time
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import pfs_bench
    binary = pfs_bench.build_slowfs(str(tmp_path))
    source = tmp_path / "source"
    source.mkdir()
    (source / "data").write_bytes(b"x" * 4096)
    pfs_bench.read_model(revalidate)
    slow = pfs_bench.SlowFS(binary, str(source), str(tmp_path / "slow"), 100)
    try:
        fd = os.open(os.path.join(slow.mountpoint, "data"), os.O_RDONLY)
        try:
            before = slow.stats()
            start, reads = time.monotonic(), 0
            while time.monotonic() - start < 0.2 and reads < 100000:  # over many clock ticks
                assert os.pread(fd, 512, 0) == b"x" * 512
                reads += 1
            after = slow.stats()
        finally:
            os.close(fd)
    finally:
        slow.unmount()
    getattrs = after["getattr"] - before["getattr"]
    # without revalidation at most the first read refreshes what the open left stale
    assert (getattrs > 10) if revalidate else (getattrs <= 1), (reads, getattrs)
