"""bench/fuse_vs_kernel.py and bench/scale_node.py (issue 14) at the smallest scale: each runs to
the end and prints the comparison it exists for. Timings here are noise (a shared 2-core
machine): nothing judges them, this keeps the scripts from rotting unnoticed."""

from __future__ import annotations

import os

import pytest

from support.benches import BENCH, bench

pytestmark = pytest.mark.slow


def test_fuse_vs_kernel_bench(test_user):
    out = bench(["/usr/bin/python3", os.path.join(BENCH, "fuse_vs_kernel.py"), "--modules",
                 "200", "--runs", "1", "--warmup", "0", "--user", test_user.name])
    for label in ("directory", "kernel-sqfs", "satchel-fuse", "ch-run-sqfs"):
        assert f"  {label} " in out, out
    assert "satchel-fuse / kernel-sqfs = " in out, out


def test_scale_node_bench(busybox_sif, test_user):
    out = bench(["/usr/bin/python3", os.path.join(BENCH, "scale_node.py"), "--n", "1,2",
                 "--runs", "1", "--sif", busybox_sif, "--command", "true",
                 "--user", test_user.name, "--load", "1"])
    assert "1 busy loops)" in out, out
    for n in (1, 2):
        assert f"N={n}: satchel/ch-run cpu " in out, out
        assert f"  host             {n} " in out, out  # the payload with no container: the floor
