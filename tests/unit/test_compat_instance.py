"""Instance records without a daemon (satchel.instance.state) and stop's signal parsing.

Pure file and process-table logic, on a temporary home: names, where records and logs live,
what `instance list --json` prints per instance, stale records, torn records, the lock.
"""

import json
import os
import signal
import subprocess

import pytest

from satchel.errors import InstanceError, UsageError
from satchel.instance import lifecycle, state


@pytest.fixture
def registry(tmp_path):
    owner = state.Owner("alice", os.getuid(), os.getgid(), str(tmp_path))
    return state.Registry(owner, host="node7")


def _record(name, pid, **extra):
    values = dict(name=name, pid=pid, starttime=state.process_start_time(pid), status="running",
                  image="/imgs/a.sif", log_out=f"/l/{name}.out", log_err=f"/l/{name}.err",
                  namespaces=["user", "mount"], ip="")
    values.update(extra)
    return state.Record(**values)


@pytest.mark.parametrize("name", ["web", "db-1", "a.b_c", "X" * 128])
def test_valid_names(name):
    state.check_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "a b", "x" * 129, "é",
                                  "name*", "../../etc/passwd"])
def test_invalid_names(name):
    with pytest.raises(UsageError, match="not a valid instance name"):
        state.check_name(name)


def test_uri_names():
    assert state.name_from_uri("instance://web") == "web"
    with pytest.raises(UsageError):
        state.name_from_uri("instance://../x")


def test_paths_follow_apptainer_and_spython(registry, tmp_path):
    home = str(tmp_path)
    assert registry.record_path("web") == f"{home}/.satchel/instances/node7/alice/web.json"
    assert registry.log_paths("web") == (
        f"{home}/.apptainer/instances/logs/node7/alice/web.out",
        f"{home}/.apptainer/instances/logs/node7/alice/web.err")
    assert registry.twin_log_dir == f"{home}/.singularity/instances/logs/node7/alice"


def test_listing_has_apptainers_json_keys():
    entry = _record("web", os.getpid()).listing()
    assert entry == {"instance": "web", "pid": os.getpid(), "img": "/imgs/a.sif", "ip": "",
                     "logErrPath": "/l/web.err", "logOutPath": "/l/web.out"}


def test_save_load_round_trip_and_running(registry):
    registry.save(_record("web", os.getpid()))
    loaded = registry.load("web")
    assert loaded.to_dict() == _record("web", os.getpid()).to_dict()
    assert [r.name for r in registry.running()] == ["web"]
    assert registry.find("web").pid == os.getpid()


def test_stale_record_removed_when_listed(registry):
    child = subprocess.Popen(["sleep", "30"])
    registry.save(_record("gone", child.pid))
    registry.save(_record("here", os.getpid()))
    child.kill()
    child.wait()
    assert [r.name for r in registry.running()] == ["here"]
    assert not os.path.exists(registry.record_path("gone"))


def test_recycled_pid_is_not_the_instance(registry):
    # same pid, another start time: a different process now owns the number
    registry.save(_record("web", os.getpid(), starttime=1))
    assert registry.running() == []
    with pytest.raises(InstanceError, match="no instance found with name web"):
        registry.find("web")


def test_starting_records_are_not_listed_but_hold_the_name(registry):
    registry.save(_record("web", os.getpid(), status="starting"))
    assert registry.running() == []
    assert state.is_alive(registry.load("web"))


def test_glob_patterns(registry):
    for name in ("web1", "web2", "db"):
        registry.save(_record(name, os.getpid()))
    assert [r.name for r in registry.running("web*")] == ["web1", "web2"]
    assert [r.name for r in registry.running("db")] == ["db"]


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]"])
def test_torn_or_foreign_record_is_discarded(registry, text):
    os.makedirs(registry.state_dir)
    with open(registry.record_path("web"), "w") as fh:
        fh.write(text)
    assert registry.load("web") is None
    assert not os.path.exists(registry.record_path("web"))


def test_save_is_atomic_and_leaves_no_temp_file(registry):
    registry.save(_record("web", os.getpid()))
    registry.save(_record("web", os.getpid(), image="/imgs/b.sif"))
    assert os.listdir(registry.state_dir) == ["web.json"]
    with open(registry.record_path("web")) as fh:
        assert json.load(fh)["image"] == "/imgs/b.sif"


def test_logs_append_and_twins_are_symlinks(registry):
    out, err = registry.open_logs("web")
    os.write(out, b"one\n")
    os.close(out)
    os.close(err)
    out, err = registry.open_logs("web")
    os.write(out, b"two\n")
    os.close(out)
    os.close(err)
    out_path, err_path = registry.log_paths("web")
    with open(out_path) as fh:
        assert fh.read() == "one\ntwo\n"
    for path in (out_path, err_path):
        twin = os.path.join(registry.twin_log_dir, os.path.basename(path))
        assert os.path.islink(twin) and os.readlink(twin) == path


def test_log_symlink_planted_at_the_real_path_is_refused(registry, tmp_path):
    os.makedirs(registry.log_dir)
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    os.symlink(target, registry.log_paths("web")[0])
    with pytest.raises(InstanceError, match="opening instance log"):
        registry.open_logs("web")
    assert target.read_text() == "keep\n"


def test_lock_serialises_writers(registry):
    import fcntl
    with registry.lock():
        fd = os.open(os.path.join(registry.state_dir, ".lock"), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


@pytest.mark.parametrize("text, number", [("15", 15), ("TERM", 15), ("SIGTERM", 15),
                                          ("sigkill", 9), ("usr1", signal.SIGUSR1),
                                          ("HUP", 1)])
def test_parse_signal(text, number):
    assert lifecycle.parse_signal(text) == number


@pytest.mark.parametrize("text", ["0", "999", "SIGNOPE", "", "-9"])
def test_parse_signal_rejects(text):
    with pytest.raises(UsageError, match="invalid signal"):
        lifecycle.parse_signal(text)


# -- root acting for another user: what a record may make root do (issue 10, points 3-4) --------

@pytest.fixture
def other_owner(tmp_path):
    """A user other than the caller (root, in CI) whose home is a temporary directory."""
    if os.getuid() != 0:
        pytest.skip("acting for another user is root's: run as root")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    return state.Owner("nobody", 65534, 65534, str(home))


def test_claim_of_a_process_outside_the_users_namespace_is_refused(other_owner):
    record = _record("web", os.getpid())  # ours: root's, in the host's user namespace
    with pytest.raises(state.NotOwned, match="not in a user namespace of nobody"):
        state.claim(record, other_owner)


def test_claim_of_a_gone_or_recycled_process_is_none(registry):
    assert state.claim(_record("web", os.getpid(), starttime=1), registry.owner) is None
    child = subprocess.Popen(["true"])
    child.wait()
    assert state.claim(_record("web", child.pid, starttime=0), registry.owner) is None
    process = state.claim(_record("web", os.getpid()), registry.owner)
    assert process.alive() and process.pid == os.getpid()
    process.close()


def test_symlinked_state_directory_is_refused_and_not_followed(other_owner, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("{}")
    registry = state.Registry(other_owner, host="node7")
    parent = os.path.dirname(registry.state_dir)
    os.makedirs(parent)
    while parent != other_owner.home:  # the user's own directories, down to the symlink
        os.chown(parent, other_owner.uid, other_owner.gid)
        parent = os.path.dirname(parent)
    os.symlink(elsewhere, registry.state_dir)
    for call in (registry.names, registry.running, lambda: registry.remove("config")):
        with pytest.raises(InstanceError, match="not a directory \\(a symlink\\?\\): not followed"):
            call()
    assert (elsewhere / "config.json").exists()


def test_directory_of_another_owner_is_refused(other_owner):
    registry = state.Registry(other_owner, host="node7")
    os.makedirs(registry.state_dir)  # made by root: not the user's
    with pytest.raises(InstanceError, match="belongs to uid 0, not to nobody"):
        registry.running()


def test_fifo_record_is_skipped_without_blocking(registry):
    os.makedirs(registry.state_dir)
    os.mkfifo(registry.record_path("pipe"))
    registry.save(_record("web", os.getpid()))
    assert [r.name for r in registry.running()] == ["web"]
    assert os.path.exists(registry.record_path("pipe"))


def test_new_logs_and_records_are_private(registry):
    out, err = registry.open_logs("web")
    os.close(out)
    os.close(err)
    registry.save(_record("web", os.getpid()))
    for path in registry.log_paths("web") + (registry.record_path("web"),):
        assert os.stat(path).st_mode & 0o777 == 0o600
    for path in (registry.log_dir, registry.state_dir, registry.twin_log_dir):
        assert os.stat(path).st_mode & 0o777 == 0o700
