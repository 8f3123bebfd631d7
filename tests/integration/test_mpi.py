"""The MPI hybrid model: Open MPI on the host launches the ranks, each rank is
`satchel exec mpi.sif /opt/app` (examples/mpi.def, Open MPI inside), run as the non-root user.

What each rank of /opt/app prints proves the model: the world size and the ring/allreduce
results (the ranks talk to each other), its own mount namespace (one container per rank), its
parent process (the launcher's own daemon: satchel exec'd into the payload, no satchel process
or daemon in between), and the launcher's variables as the rank sees them.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from support.fixtures_runtime import wait_processes_gone
from support.fixtures_users import SATCHEL

pytestmark = pytest.mark.slow


def parse_ranks(stdout: str) -> list[dict]:
    ranks = []
    for line in stdout.splitlines():
        if line.startswith("rank="):
            ranks.append(dict(item.split("=", 1) for item in line.split()))
    return sorted(ranks, key=lambda r: int(r["rank"]))


def check_world(ranks: list[dict], size: int, parents: tuple[str, ...]) -> None:
    assert [int(r["rank"]) for r in ranks] == list(range(size))
    host_mntns = str(os.stat("/proc/self/ns/mnt").st_ino)
    for r in ranks:
        rank = int(r["rank"])
        assert r["size"] == str(size)
        assert r["left"] == str((rank - 1) % size)           # point to point
        assert r["sum"] == str(size * (size - 1) // 2)      # collective
        assert r["image"] == "yes"                          # /opt/src/app.c exists only there
        assert r["parent"] in parents, r                    # no satchel process in between
        assert r["PMIX_RANK"] == str(rank)                  # the launcher's env passed in
        assert r["mntns"] != host_mntns
    assert len({r["mntns"] for r in ranks}) == size         # one container per rank


@pytest.fixture
def private_mpi_image(mpi_image, user_tmp):
    """A copy of the MPI image only this test uses, so its path identifies our processes."""
    path = os.path.join(user_tmp, "mpi-copy.sif")
    subprocess.run(["cp", mpi_image, path], check=True)
    os.chmod(path, 0o644)
    return path


def test_mpirun_hybrid_four_ranks(private_mpi_image, test_user, user_tmp):
    argv = ["mpirun", "--oversubscribe", "-np", "4", SATCHEL, "exec", private_mpi_image,
            "/opt/app"]
    proc = subprocess.run(test_user.argv(argv), env=test_user.env(), cwd=user_tmp,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    check_world(parse_ranks(proc.stdout), 4, parents=("mpirun", "orted"))
    assert "WARNING" not in proc.stderr and "ORTE_ERROR" not in proc.stderr, proc.stderr
    assert wait_processes_gone(private_mpi_image) == []


def test_mpirun_rank_failure_is_the_job_status(private_mpi_image, test_user, user_tmp):
    # the runscript is /opt/app; a rank that fails inside its container fails the job
    argv = ["mpirun", "--oversubscribe", "-np", "2", SATCHEL, "exec", private_mpi_image, "sh",
            "-c", 'exit $((OMPI_COMM_WORLD_RANK + 5))']
    proc = subprocess.run(test_user.argv(argv), env=test_user.env(), cwd=user_tmp,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (5, 6), (proc.returncode, proc.stderr)
    assert wait_processes_gone(private_mpi_image) == []


def test_srun_pmix_launches_containerized_ranks(slurm, private_mpi_image, test_user, user_tmp):
    slurm.wait_idle()
    proc = slurm.run(["srun", "--mpi=pmix", "--kill-on-bad-exit=1", "-n", "4", SATCHEL, "exec",
                      private_mpi_image, "/opt/app"], user=test_user, cwd=user_tmp, timeout=120)
    assert proc.returncode == 0, proc.stderr + slurm.logs()
    check_world(parse_ranks(proc.stdout), 4, parents=("slurmstepd",))
    assert wait_processes_gone(private_mpi_image) == []


@pytest.mark.parametrize("mpi", ["none", "pmi2"])
def test_srun_without_pmix_fails_loudly(slurm, private_mpi_image, test_user, user_tmp, mpi):
    """Debian's Open MPI needs Slurm's PMIx: launched with another PMI it must stop with
    Open MPI's message, never run as separate one-rank worlds (MPICH's silent failure mode)."""
    slurm.wait_idle()
    proc = slurm.run(["srun", f"--mpi={mpi}", "--kill-on-bad-exit=1", "-n", "2", SATCHEL,
                      "exec", private_mpi_image, "/opt/app"], user=test_user, cwd=user_tmp,
                     timeout=120)
    assert proc.returncode != 0
    assert parse_ranks(proc.stdout) == []
    assert "direct launched" in proc.stderr or "PMI" in proc.stderr, proc.stderr
    assert wait_processes_gone(private_mpi_image) == []


def test_srun_pmix_across_two_nodes(slurm_multinode, private_mpi_image, test_user, user_tmp):
    """Two slurmds in their own network namespaces: ranks on different "nodes" talk over TCP
    through the fabric bridge, each in its own container."""
    slurm_multinode.wait_idle()
    proc = slurm_multinode.run(["srun", "--mpi=pmix", "--kill-on-bad-exit=1", "-N", "2", "-n",
                                "4", SATCHEL, "exec", private_mpi_image, "/opt/app"],
                               user=test_user, cwd=user_tmp, timeout=120)
    assert proc.returncode == 0, proc.stderr + slurm_multinode.logs()
    ranks = parse_ranks(proc.stdout)
    check_world(ranks, 4, parents=("slurmstepd",))
    assert sorted(r["host"] for r in ranks) == ["satnode1"] * 2 + ["satnode2"] * 2
    assert wait_processes_gone(private_mpi_image) == []
