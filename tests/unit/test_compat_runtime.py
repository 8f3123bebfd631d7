"""The runtime options the drop-in adds, decided in the plan (pure, fake host):
--net/--network/--network-args, --no-eval, instance start and instance:// joins.

What they do in a real container is tested in tests/integration/test_dropin.py and
test_instance.py as the non-root user.
"""

import pytest

from satchel.errors import UsageError
from satchel.image.formats import ImageRef
from satchel.runtime import plan as P
from satchel.runtime.config import default_config_path, load_config

from test_plan import FakeHost  # the runtime's fake host: invented users and paths

SESSION = "/pkg/satchel/runtime/session"
SIF = ImageRef("/imgs/a.sif", "sif", 4096, 8192, "squashfs")


def plan(host=None, **opts):
    command = opts.pop("command", "exec")
    args = opts.pop("args", ["/bin/true"])
    return P.build_plan(P.RunOptions(command, args, **opts), load_config(default_config_path()),
                        SIF, host or FakeHost(), session_dir=SESSION)


def kinds(p):
    return [op.kind for op in p.ops]


# -- --net --network none ---------------------------------------------------------------------

@pytest.mark.parametrize("uid", [1000, 0])
def test_net_none_unshares_net_and_brings_up_loopback(uid):
    p = plan(FakeHost(uid=uid), net=True, network="none")
    assert "net" in p.namespaces
    k = kinds(p)
    unshare = max(i for i, op in enumerate(p.ops) if op.kind == P.UNSHARE)
    assert "net" in p.ops[unshare].data
    assert k[unshare + 1] == P.NET_LOOPBACK and p.ops[unshare + 1].source == "lo"
    assert k.index(P.NET_LOOPBACK) < k.index(P.DROP_CAPS)  # needs CAP_NET_ADMIN


def test_no_net_no_network_namespace():
    p = plan()
    assert "net" not in p.namespaces and P.NET_LOOPBACK not in kinds(p)


def test_net_without_network_is_bridge_and_refused():
    with pytest.raises(UsageError, match="bridge"):
        plan(net=True)


@pytest.mark.parametrize("network", ["bridge", "ptp", "none,bridge", "mycni"])
def test_other_networks_refused(network):
    with pytest.raises(UsageError, match="not supported"):
        plan(net=True, network=network)


@pytest.mark.parametrize("value, pair", [
    ('"portmap=8080:80/tcp"', ("portmap", "8080:80/tcp")),
    ("'IP=10.0.0.5'", ("IP", "10.0.0.5")),
    ("portmap=8080:80/tcp", ("portmap", "8080:80/tcp")),
])
def test_network_args_with_literal_quotes_tolerated(value, pair):
    p = plan(net=True, network="none", network_args=[value])
    op = next(op for op in p.ops if op.kind == P.NET_LOOPBACK)
    assert op.data == (pair,)
    assert any("no effect" in w for w in p.warnings)


@pytest.mark.parametrize("value", ["bogus", '"=x"', '""'])
def test_network_args_malformed(value):
    with pytest.raises(UsageError, match="--network-args"):
        plan(net=True, network="none", network_args=[value])


def test_network_without_net_warns_and_changes_nothing():
    p = plan(network="none")
    assert "net" not in p.namespaces
    assert any("without --net" in w for w in p.warnings)


# -- --no-eval ----------------------------------------------------------------------------------

SHELLS = [["/bin/sh"], ["/bin/busybox", "sh"]]
TRICKY = 'hi $WHO $(echo sub) `echo bq` "q" \\b \'s\''


def _in_container_shell(shell, environ):
    """Run the action script as the container would (no /.singularity.d on the host)."""
    import subprocess

    from satchel.runtime.environment import action_script
    env = dict(environ)
    env["PATH"] = "/usr/bin:/bin"
    out = subprocess.run(shell + ["-c", action_script("exec", "> "), "exec", "/bin/sh", "-c",
                                  'printf "%s|%s|%s" "$G" "${APPTAINER_NO_EVAL-unset}" '
                                  '"${SINGULARITY_NO_EVAL-unset}"'],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
def test_default_evaluates_injected_values_like_double_quotes(shell):
    host = FakeHost(environ={"WHO": "alice", "SINGULARITYENV_G": TRICKY})
    p = plan(host)
    assert p.environ["__SATCHEL_EVAL"] == "G"
    out = _in_container_shell(shell, p.environ)
    assert out == 'hi alice sub bq "q" \\b \'s\'|unset|unset'


@pytest.mark.parametrize("shell", SHELLS, ids=["dash", "busybox"])
@pytest.mark.parametrize("source", ["env", "option", "file"])
def test_no_eval_passes_values_verbatim_and_says_so(shell, source):
    environ = {"WHO": "alice"}
    opts = {"no_eval": True}
    if source == "env":
        environ["APPTAINERENV_G"] = TRICKY
    elif source == "option":
        opts["env"] = ["G=" + TRICKY.replace(",", "")]
    else:
        opts["env_file_pairs"] = [("G", TRICKY)]
    p = plan(FakeHost(environ=environ), **opts)
    assert p.environ["__SATCHEL_EVAL"] == ""
    assert _in_container_shell(shell, p.environ) == TRICKY + "|1|1"


def test_gpu_and_no_eval_variables_are_never_evaluated():
    p = plan(FakeHost(environ={"SINGULARITYENV_A": "$x"}), no_eval=False)
    assert p.environ["__SATCHEL_EVAL"] == "A"
    assert "SINGULARITY_NO_EVAL" not in p.environ
    p = plan(FakeHost(environ={"SINGULARITYENV_A": "$x"}), no_eval=True)
    assert p.environ["SINGULARITY_NO_EVAL"] == "1" and p.environ["A"] == "$x"


# -- instances: start ends in INSTANCE_INIT, instance:// joins --------------------------------

@pytest.mark.parametrize("pid", [False, True])
def test_instance_start_ends_as_init_instead_of_exec(pid):
    p = plan(command="start", args=["a"], instance_ready_fd=9, pid=pid)
    k = kinds(p)
    assert k[-1] == P.INSTANCE_INIT and p.ops[-1].data == 9
    assert P.EXEC not in k and P.EXEC_CHILD not in k
    assert k.index(P.PIVOT_ROOT) < k.index(P.INSTANCE_INIT)
    assert p.argv[3] == "/.singularity.d/actions/start" and p.argv[4:] == ["a"]
    assert "/.singularity.d/startscript" in p.argv[2]


def _join(**opts):
    target = P.JoinTarget("web", 4242, ("user", "mount", "pid", "uts", "net"), "/imgs/a.sif")
    return plan(join=target, **opts)


def test_join_enters_namespaces_user_first_then_forks_into_pid_ns():
    p = _join(command="exec", args=["id"])
    k = kinds(p)
    assert k[:2] == [P.JOIN_NAMESPACES, P.FORK_INIT]
    pid, names = p.ops[0].data
    assert pid == 4242 and names[0] == "user" and names[-1] == "pid" and "mount" in names
    assert k[-4:] == [P.CHDIR, P.DROP_CAPS, P.CHECK_SHELL, P.EXEC]
    for never in (P.UNSHARE, P.TMPFS, P.BIND, P.PIVOT_ROOT, P.FUSE_PREPARE):
        assert never not in k  # nothing is built: the instance's container is reused
    assert p.environ["APPTAINER_CONTAINER"] == "/imgs/a.sif"
    assert p.argv[3:] == ["/.singularity.d/actions/exec", "id"]


def test_join_without_pid_namespace_execs_directly():
    target = P.JoinTarget("web", 7, ("user", "mount"), "/imgs/a.sif")
    p = plan(join=target)
    assert kinds(p)[:2] == [P.JOIN_NAMESPACES, P.CHDIR]


def test_join_warns_about_options_fixed_at_start():
    p = _join(binds=["/data"], contain=True, hostname="x")
    assert any("--binds" in w and "--contain" in w and "--hostname" in w for w in p.warnings)
    assert P.BIND not in kinds(p)


def test_join_keeps_environment_options():
    p = _join(cleanenv=True, env=["A=1"], no_eval=True, pwd="/srv")
    assert p.environ["A"] == "1" and p.environ["APPTAINER_NO_EVAL"] == "1"
    chdir = next(op for op in p.ops if op.kind == P.CHDIR)
    assert chdir.data == ("/srv",) and "strict" in chdir.flags
