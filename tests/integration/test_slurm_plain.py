"""The Slurm fixture itself, without containers: the daemons answer a non-root user's srun,
sbatch, scancel and sstat. If these fail, the container tests in test_slurm.py cannot mean
anything, so they are kept apart."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.slow


def test_srun_two_tasks_as_user(slurm, test_user):
    r = slurm.run(["srun", "-n2", "sh", "-c", "echo $SLURM_PROCID $(id -un)"], user=test_user,
                  check=True)
    assert sorted(r.stdout.split("\n")[:2]) == ["0 satchel-test", "1 satchel-test"]


def test_sbatch_exit_code_and_output(slurm, test_user, user_tmp):
    script = os.path.join(user_tmp, "job.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/sh\necho hello from $SLURM_JOB_ID\nexit 7\n")
    os.chmod(script, 0o755)
    job = slurm.run(["sbatch", "--parsable", "-o", f"{user_tmp}/out.txt", script],
                    user=test_user, cwd=user_tmp, check=True).stdout.strip()
    info = slurm.wait_job(job)
    assert info["JobState"] == "FAILED"
    assert info["ExitCode"] == "7:0"
    assert open(f"{user_tmp}/out.txt").read() == f"hello from {job}\n"


def test_scancel_sends_term_and_sstat_sees_memory(slurm, test_user, user_tmp):
    slurm.wait_idle()
    script = os.path.join(user_tmp, "job.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/sh\n"
                 "srun sh -c 'trap \"echo TERM > term.txt; exit 3\" TERM; "
                 "/usr/bin/python3 -c \"b = bytearray(200 << 20); import time; "
                 "open(\\\"ready\\\", \\\"w\\\").close(); time.sleep(60)\" & wait'\n")
    os.chmod(script, 0o755)
    job = slurm.run(["sbatch", "--parsable", "-o", "/dev/null", script], user=test_user,
                    cwd=user_tmp, check=True).stdout.strip()
    deadline = time.monotonic() + 30
    while not os.path.exists(f"{user_tmp}/ready") and time.monotonic() < deadline:
        time.sleep(0.1)
    max_rss_kib = 0
    while time.monotonic() < deadline and max_rss_kib < 200 * 1024:
        out = slurm.run(["sstat", "-n", "-P", "-j", f"{job}.0", "-o", "MaxRSS"],
                        user=test_user).stdout.strip()
        max_rss_kib = int(out.rstrip("K")) if out.endswith("K") else 0
        time.sleep(0.3)
    assert max_rss_kib >= 200 * 1024, out
    slurm.run(["scancel", job], user=test_user, check=True)
    info = slurm.wait_job(job)
    assert info["JobState"] == "CANCELLED"
    assert open(f"{user_tmp}/term.txt").read() == "TERM\n"
