"""The bench/ scripts the issues ask for, at the smallest scale: each runs to the end and
prints the comparison it exists for. Timings on a shared 2-core machine are noise, so nothing
here judges them (the figures are measured by hand, see README); this only keeps the scripts
from rotting unnoticed. test_pfs_bench.py and test_gpu_check_script.py cover the other two.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from support.benches import BENCH, bench

pytestmark = pytest.mark.slow


def test_exec_startup_bench(busybox_sif, test_user):
    out = bench(["/usr/bin/python3", os.path.join(BENCH, "exec_startup.py"), "--runs", "2",
                 "--warmup", "0", "--sif", busybox_sif, "--user", test_user.name])
    for label in ("satchel-sif", "ch-run-sqfs", "satchel-dir", "ch-run-dir", "bwrap-dir"):
        assert f"  {label} " in out, out
    assert "satchel-sif / ch-run-sqfs = " in out and "satchel-dir / ch-run-dir = " in out


def test_exec_startup_bench_compares_another_launcher(busybox_sif, test_user):
    from support.fixtures_users import SATCHEL
    out = bench(["/usr/bin/python3", os.path.join(BENCH, "exec_startup.py"), "--runs", "2",
                 "--warmup", "0", "--sif", busybox_sif, "--user", test_user.name,
                 "--only", "satchel-sif,satchel-sif@base", "--compare", SATCHEL])
    assert "  satchel-sif@base " in out and "satchel-sif / satchel-sif@base = " in out, out
    assert "satchel-dir" not in out


def test_startup_phases_bench(busybox_sif, test_user):
    src = os.path.join(os.path.dirname(BENCH), "src")
    out = bench(["/usr/bin/python3", os.path.join(BENCH, "startup_phases.py"), "--runs", "2",
                 "--warmup", "0", "--sif", busybox_sif, "--image", "sif", "--user",
                 test_user.name, "--base", src])
    assert "this tree" in out and "base" in out, out
    for phase in ("interpreter", "import cli.main", "to build_plan", "build_plan", "apply",
                  "after the interpreter"):
        assert f"  {phase} " in out, out
    ops = out.split("operations of apply:", 1)[1]
    for kind in ("mount_squashfs_fuse", "ensure_mountpoint", "pivot_root", "exec"):
        assert f"    {kind} " in ops, out
    apply = [line for line in out.splitlines() if line.startswith("  apply ")][0]
    assert float(apply.split()[1]) > 0, out  # marks were written for the launches


def test_build_sif_bench(busybox_sandbox):
    out = bench([sys.executable, os.path.join(BENCH, "build_sif.py"), "--runs", "1",
                 "--rootfs", busybox_sandbox])
    assert "median satchel build:" in out and "median mksquashfs alone:" in out
    assert "ratio: " in out and "(goal <= 1.2)" in out


def test_pull_bench(tmp_path):
    out = bench([sys.executable, os.path.join(BENCH, "pull_bench.py"), "--runs", "1",
                 "--layers", "2", "--layer-mb", "1"])
    assert "download: satchel / skopeo = " in out
    assert "pull to SIF: satchel / (skopeo + tar + mksquashfs) = " in out


def test_mpi_pingpong_bench(mpi_image, test_user, tmp_path):
    results = tmp_path / "pingpong.json"
    bench([sys.executable, os.path.join(BENCH, "mpi_pingpong", "compare.py"), "--image",
           mpi_image, "--rounds", "1", "--trials", "1", "--user", test_user.name, "--json",
           str(results)])
    summary = json.loads(results.read_text())["summary"]
    for key in ("latency_8B_us", "bandwidth_1MiB_MBps"):
        assert summary[key]["bare"] > 0 and summary[key]["container"] > 0, summary


def test_push_bench():
    out = bench([sys.executable, os.path.join(BENCH, "push_bench.py"), "--runs", "1",
                 "--size-mb", "4"])
    assert "oras push: satchel / skopeo = " in out
    assert "OCI export to a registry: satchel / (unsquashfs + tar + skopeo) = " in out


@pytest.mark.parametrize("runner", ["fuse2fs", "satchel"])
def test_overlay_bench(test_user, tmp_path, runner):
    """bench/overlay_bench.py (issue 12): installs into an ext3 overlay image and a directory
    on the slow file system, imports from 2 interpreters, reports both."""
    out = bench(["/usr/bin/python3", os.path.join(BENCH, "overlay_bench.py"), "--modules",
                 "40", "--delay-us", "50", "--parallel", "2", "--runner", runner, "--user",
                 test_user.name, "--json", str(tmp_path / "r.json")])
    assert "import, 2 interpreter(s): the overlay image needs" in out, out
    rows = json.load(open(tmp_path / "r.json"))["results"]
    assert {(r["case"], r["step"]) for r in rows} == {
        (c, s) for c in ("directory", "overlay") for s in ("install", "import")}
    from support.fixtures_runtime import live_processes, wait_until
    assert wait_until(lambda: not [p for p in live_processes("fuse2fs")
                                   if os.stat(f"/proc/{p}").st_uid == test_user.uid], 5)
