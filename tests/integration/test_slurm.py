"""Containers under a real Slurm (tests/support/fixtures_slurm.py), submitted by the non-root
test user, with no Slurm plugin: satchel exec's into the payload, so the process Slurm
started, signals, tracks and accounts is the user's program itself."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from support.fixtures_runtime import wait_processes_gone
from support.fixtures_users import SATCHEL

pytestmark = pytest.mark.slow

# allocates MB megabytes and touches them, burns 1.5 s of CPU, writes READY_FILE with its pid,
# and on SIGTERM writes "TERM" to TERM_FILE and exits 3
MEMHOG = r"""
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static const char *term_file;
static void on_term(int sig) {
    (void)sig;
    int fd = open(term_file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) { (void)!write(fd, "TERM\n", 5); close(fd); }
    _exit(3);
}
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    size_t bytes = (size_t)atol(argv[1]) << 20;
    term_file = argv[2];
    signal(SIGTERM, on_term);
    volatile char *p = malloc(bytes);  /* volatile: the compiler must not drop the stores */
    for (size_t i = 0; i < bytes; i += 4096) p[i] = 1;
    struct timespec t0, t;  /* and about 1.5 s of CPU time, for the accounting to see */
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    do clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < 1500);
    FILE *f = fopen(argv[3], "w");
    fprintf(f, "%d %d\n", (int)getpid(), p[bytes - 4096]);
    fclose(f);
    for (;;) pause();
}
"""


@pytest.fixture
def job_image(debian_sif, user_tmp):
    """A private copy of the Debian image: its path marks this test's processes."""
    path = os.path.join(user_tmp, "job.sif")
    subprocess.run(["cp", debian_sif, path], check=True)
    os.chmod(path, 0o644)
    return path


def cpu_seconds(text: str) -> float:
    """Slurm's [DD-][HH:]MM:SS[.mmm] as seconds (0 for anything else)."""
    try:
        days, _, rest = text.rpartition("-")
        parts = [float(p) for p in rest.split(":")]
    except ValueError:
        return 0.0
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds + (int(days) * 86400 if days else 0)


def _complete_line(path: str) -> bool:
    """Whether `path` holds a whole line (written up to its newline)."""
    try:
        with open(path) as fh:
            return fh.read().endswith("\n")
    except FileNotFoundError:
        return False


def write_script(path: str, body: str) -> str:
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


def test_srun_two_containers_hostname(slurm, job_image, test_user, user_tmp):
    slurm.wait_idle()
    r = slurm.run(["srun", "-n2", SATCHEL, "exec", job_image, "hostname"], user=test_user,
                  cwd=user_tmp, check=True)
    assert r.stdout.splitlines() == [socket.gethostname()] * 2


def test_srun_environment_reaches_the_container(slurm, job_image, test_user, user_tmp):
    slurm.wait_idle()
    r = slurm.run(["srun", "-n2", SATCHEL, "exec", job_image, "sh", "-c",
                   'echo "$SLURM_PROCID $SLURM_NTASKS $SLURM_JOB_ID $(cat /etc/debian_version)"'],
                  user=test_user, cwd=user_tmp, check=True)
    lines = sorted(r.stdout.splitlines())
    assert [line.split()[:2] for line in lines] == [["0", "2"], ["1", "2"]]
    assert lines[0].split()[2] == lines[1].split()[2]           # one job
    assert lines[0].split()[3].startswith("12.")                # Debian 12 inside, whatever the host


def test_sbatch_job_exit_code_is_the_containers(slurm, job_image, test_user, user_tmp):
    slurm.wait_idle()
    script = write_script(os.path.join(user_tmp, "exit.sh"),
                          f"{SATCHEL} exec {job_image} sh -c 'echo in container; exit 42'\n")
    job = slurm.run(["sbatch", "--parsable", "-o", f"{user_tmp}/exit.out", script],
                    user=test_user, cwd=user_tmp, check=True).stdout.strip()
    info = slurm.wait_job(job)
    assert info["JobState"] == "FAILED"
    assert info["ExitCode"] == "42:0"
    assert open(f"{user_tmp}/exit.out").read() == "in container\n"
    assert wait_processes_gone(job_image) == []


def test_scancel_term_memory_accounting_and_cleanup(slurm, job_image, test_user, user_tmp):
    """A container allocating ~200 MB: sstat shows it; scancel's SIGTERM reaches the trapping
    program inside; the job ends CANCELLED and nothing of the container outlives it."""
    slurm.wait_idle()
    memhog = os.path.join(user_tmp, "memhog")
    subprocess.run(["gcc", "-O1", "-x", "c", "-o", memhog, "-"], input=MEMHOG, text=True,
                   check=True)
    ready, term = f"{user_tmp}/ready", f"{user_tmp}/term.txt"
    script = write_script(os.path.join(user_tmp, "hog.sh"),
                          f"srun {SATCHEL} exec {job_image} {memhog} 200 {term} {ready}\n")
    job = slurm.run(["sbatch", "--parsable", "--mem=1000", "-o", f"{user_tmp}/hog.out", script],
                    user=test_user, cwd=user_tmp, check=True).stdout.strip()
    deadline = time.monotonic() + 60
    while not _complete_line(ready) and time.monotonic() < deadline:
        time.sleep(0.1)  # the file exists before memhog has written (and closed) its line
    assert _complete_line(ready), slurm.logs()
    pid = int(open(ready).read().split()[0])
    # the payload is the step's own process: satchel exec'd into it (same PID Slurm started)
    assert open(f"/proc/{pid}/comm").read().strip() == "memhog"

    max_rss_kib, cpu_s, out = 0, 0.0, ""
    while time.monotonic() < deadline and (max_rss_kib < 200 * 1024 or cpu_s < 1):
        out = slurm.run(["sstat", "-n", "-P", "-j", f"{job}.0", "-o", "MaxRSS,AveCPU"],
                        user=test_user).stdout.strip()
        rss, _, cpu = out.partition("|")
        max_rss_kib = int(rss[:-1]) if rss.endswith("K") else 0
        cpu_s = cpu_seconds(cpu)
        time.sleep(0.3)
    assert max_rss_kib >= 200 * 1024, f"sstat MaxRSS|AveCPU {out!r}"
    assert cpu_s >= 1, f"sstat MaxRSS|AveCPU {out!r}"

    slurm.run(["scancel", job], user=test_user, check=True)
    info = slurm.wait_job(job)
    assert info["JobState"] == "CANCELLED"
    assert open(term).read() == "TERM\n"
    assert not os.path.exists(f"/proc/{pid}") or \
        open(f"/proc/{pid}/comm").read().strip() != "memhog"
    assert wait_processes_gone(job_image) == []


def test_srun_containers_on_two_nodes(slurm_multinode, job_image, test_user, user_tmp):
    """One task per node (own network namespace and hostname): the container sees its node."""
    slurm_multinode.wait_idle()
    r = slurm_multinode.run(["srun", "-N2", "-n2", "-l", SATCHEL, "exec", job_image, "hostname"],
                            user=test_user, cwd=user_tmp, check=True)
    assert sorted(r.stdout.splitlines()) == ["0: satnode1", "1: satnode2"]
    assert wait_processes_gone(job_image) == []
