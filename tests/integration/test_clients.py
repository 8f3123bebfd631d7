"""Real clients drive satchel through the `singularity`/`apptainer` names, as a non-root user.

spython, cwltool and Snakemake come from PyPI (.venv-clients, made by scripts/install-deps)
and run unchanged as `satchel-test`, with only local images. A logging wrapper first on their
PATH records every command line they issue (saved under out/client-calls/, printed with -s);
each test fails when the client's own call fails, and checks what the client says it did
against the files it produced.
"""

import json
import os
import shutil
import textwrap

import pytest

from support.fixtures_clients import client_bin
from support.fixtures_runtime import assert_nothing_left

pytestmark = pytest.mark.slow


def _write(path: str, text: str, owner=None) -> str:
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(text).lstrip())
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
    return path


def _run_py(client_tools, clients_python, cwd, code, timeout=300, env=None):
    script = _write(os.path.join(cwd, "client.py"), code, client_tools.user)
    result = client_tools.run([clients_python, script], cwd=cwd, timeout=timeout,
                              extra_env=env)
    assert result.returncode == 0, f"client script failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- spython ---------------------------------------------------------------------------------

def test_spython_execute_run_inspect(client_tools, clients_python, busybox_sif, user_tmp,
                                     test_user):
    data = os.path.join(user_tmp, "data")
    os.mkdir(data)
    _write(os.path.join(data, "in.txt"), "bound from the host\n", test_user)
    os.chown(data, test_user.uid, test_user.gid)
    out = _run_py(client_tools, clients_python, user_tmp, f"""
        import json
        from spython.main import Client
        res = {{}}
        res["version"] = Client.version()
        ex = Client.execute({busybox_sif!r}, ["sh", "-c", "cat /data/in.txt; id -u; "
                            "echo ${{HOSTVAR-unset}}"], bind=[{data + ':/data'!r}],
                            options=["--cleanenv"], return_result=True)
        res["execute"] = ex
        run = Client.run({busybox_sif!r}, args=["one", "two words"], return_result=True)
        res["run"] = run
        res["inspect"] = Client.inspect({busybox_sif!r})
        print(json.dumps(res))
    """, env={"HOSTVAR": "from the host"})  # --cleanenv must keep it out
    assert out["version"].startswith("singularity version 3.")
    ex = out["execute"]
    assert ex["return_code"] == 0, ex
    text = "".join(ex["message"]) if isinstance(ex["message"], list) else ex["message"]
    assert text.splitlines() == ["bound from the host", str(test_user.uid), "unset"]
    run = out["run"]
    assert run["return_code"] == 0, run
    run_text = "".join(run["message"]) if isinstance(run["message"], list) else run["message"]
    assert "runscript args: one two words" in run_text
    attrs = out["inspect"]["attributes"]
    assert attrs["labels"]["org.satchel.test"] == "busybox"
    assert "runscript args" in attrs["runscript"]
    lines = client_tools.save("spython-execute-run-inspect")
    assert any(" exec --bind " + data + ":/data --cleanenv " + busybox_sif in line
               for line in lines), lines
    assert any(line.startswith("singularity inspect ") and " --json " in line for line in lines)


def test_spython_instances(instance_client_tools, clients_python, busybox_sif, instance_user):
    # as satchel-inst: the instance tests' own user, whose instances no other session touches
    client_tools, test_user = instance_client_tools, instance_user
    user_tmp = client_tools.base
    out = _run_py(client_tools, clients_python, user_tmp, f"""
        import json, os
        from spython.main import Client
        res = {{}}
        web = Client.instance({busybox_sif!r}, name="spy-web", options=["--contain"])
        db = Client.instance({busybox_sif!r}, name="spy-db")
        res["web_pid"] = getattr(web, "pid", None)
        listed = Client.instances(quiet=True)
        res["listed"] = sorted(i.name for i in listed)
        res["one"] = Client.instances(name="spy-web", return_json=True, quiet=True)
        ex = Client.execute(web, ["sh", "-c", "echo inside; id -u"], return_result=True)
        res["exec"] = ex
        res["out_log"] = web.output_logs()
        res["stop_web"] = web.stop()
        res["after_one"] = sorted(i.name for i in Client.instances(quiet=True))
        res["stopall"] = Client.instance_stopall()
        after = Client.instances(quiet=True)
        res["after_all"] = after if isinstance(after, list) else [after]
        print(json.dumps(res, default=str))
    """)
    assert isinstance(out["web_pid"], int) and out["web_pid"] > 1
    assert out["listed"] == ["spy-db", "spy-web"]
    assert out["one"]["instance"] == "spy-web" and out["one"]["img"] == busybox_sif
    assert out["exec"]["return_code"] == 0, out["exec"]
    msg = out["exec"]["message"]
    assert ("".join(msg) if isinstance(msg, list) else msg).split() == ["inside",
                                                                       str(test_user.uid)]
    assert "startscript" in out["out_log"]  # the %startscript's stdout, read from ~/.singularity
    assert out["stop_web"] == 0
    assert out["after_one"] == ["spy-db"]
    assert out["stopall"] == 0
    assert out["after_all"] == []
    lines = client_tools.save("spython-instances")
    assert f"singularity --quiet instance start --contain {busybox_sif} spy-web" in lines
    assert "singularity --quiet instance list --json spy-web" in lines
    assert "singularity instance list --json" in lines
    assert "singularity --quiet instance stop spy-web" in lines
    assert "singularity instance stop --all" in lines  # modern form: "version 3" was seen
    assert any(" exec instance://spy-web sh -c " in line for line in lines)
    assert_nothing_left(busybox_sif, timeout=5)


def test_spython_build_sif_and_sandbox(client_tools, clients_python, busybox_sif, user_tmp,
                                       test_user):
    definition = _write(os.path.join(user_tmp, "tool.def"), f"""
        Bootstrap: localimage
        From: {busybox_sif}

        %post
            echo built-by-spython > /etc/spython-built

        %labels
            MADE_BY spython

        %runscript
            cat /etc/spython-built
    """, test_user)
    sif = os.path.join(user_tmp, "built.sif")
    sandbox = os.path.join(user_tmp, "built-sandbox")
    out = _run_py(client_tools, clients_python, user_tmp, f"""
        import json
        from spython.main import Client
        res = {{}}
        res["sif"] = Client.build(recipe={definition!r}, image={sif!r}, sudo=False)
        res["sandbox"] = Client.build(recipe={definition!r}, image={sandbox!r}, sandbox=True,
                                      sudo=False)
        res["run"] = Client.run({sif!r}, return_result=True)
        res["labels"] = Client.inspect({sif!r})["attributes"]["labels"]
        print(json.dumps(res))
    """, timeout=600)
    assert out["sif"] == sif and out["sandbox"] == sandbox
    assert os.path.isfile(sif) and os.stat(sif).st_uid == test_user.uid
    with open(os.path.join(sandbox, "etc", "spython-built")) as fh:
        assert fh.read() == "built-by-spython\n"
    assert out["run"]["return_code"] == 0
    msg = out["run"]["message"]
    assert ("".join(msg) if isinstance(msg, list) else msg).strip() == "built-by-spython"
    assert out["labels"]["MADE_BY"] == "spython"
    lines = client_tools.save("spython-build")
    assert f"singularity build {sif} {definition}" in lines
    assert f"singularity build --sandbox {sandbox} {definition}" in lines


# -- cwltool ---------------------------------------------------------------------------------

CWL_TOOL = """
cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement:
    dockerPull: satchel/busybox:1.0
  EnvVarRequirement:
    envDef:
      GREETING: hello from cwl
baseCommand: [sh, -c]
arguments:
  - valueFrom: 'echo "$GREETING"; id -u; cat "$0"; echo "$HOME"'
  - $(inputs.infile.path)
stdout: result.txt
inputs:
  infile: File
outputs:
  result:
    type: File
    outputBinding:
      glob: result.txt
"""


def test_cwltool_singularity_with_local_sif(client_tools, oci_style_sif, user_tmp, test_user):
    cache = os.path.join(user_tmp, "cwl-cache")
    os.mkdir(cache)
    # cwltool's own cache naming: "/" -> "_s_", "_" -> "___", tag kept, ".sif" for >= 3
    shutil.copy(oci_style_sif, os.path.join(cache, "satchel_s_busybox:1.0.sif"))
    tool = _write(os.path.join(user_tmp, "tool.cwl"), CWL_TOOL)
    infile = _write(os.path.join(user_tmp, "input.txt"), "the input file\n")
    job = _write(os.path.join(user_tmp, "job.yml"), f"infile:\n  class: File\n  path: {infile}\n")
    outdir = os.path.join(user_tmp, "out")
    for path in (cache, tool, infile, job):
        os.chown(path, test_user.uid, test_user.gid)
    result = client_tools.run(
        [client_bin("cwltool"), "--singularity", "--outdir", outdir, tool, job], cwd=user_tmp,
        extra_env={"CWL_SINGULARITY_CACHE": cache}, timeout=600)
    lines = client_tools.save("cwltool")
    assert result.returncode == 0, f"cwltool failed:\n{result.stderr[-6000:]}"
    report = json.loads(result.stdout)
    produced = report["result"]["path"]
    assert os.path.dirname(produced) == outdir
    st = os.stat(produced)
    assert st.st_uid == test_user.uid
    with open(produced) as fh:
        greeting, uid, content, home = fh.read().splitlines()
    assert greeting == "hello from cwl"        # EnvVarRequirement via SINGULARITYENV_
    assert uid == str(test_user.uid)           # the caller's uid inside the container
    assert content == "the input file"         # the input file bound in read-only
    run_line = next(line for line in lines if " run " in line)
    assert home == run_line.split(" --home ", 1)[1].split()[0].split(":")[1]  # --home SRC:DST
    runs = [line for line in lines if " run " in f" {line} " or " --quiet run " in line]
    assert runs, lines
    # the modern paths cwltool takes for singularity >= 3.10
    assert all(" --no-eval " in line and " --net --network none " in line for line in runs)
    assert any("--mount=type=bind,source=" in line for line in runs)
    assert any("SINGULARITYENV_GREETING='hello from cwl'" in line for line in runs)
    assert lines[0].endswith("singularity --version")


# -- Snakemake -------------------------------------------------------------------------------

def test_snakemake_apptainer_with_local_sif(client_tools, busybox_sif, user_tmp, test_user):
    work = os.path.join(user_tmp, "wf")
    os.mkdir(work)
    _write(os.path.join(work, "in.txt"), "snakemake input\n")
    _write(os.path.join(work, "Snakefile"), f"""
        shell.executable("sh")

        rule all:
            input: "out.txt"

        rule inside:
            input: "in.txt"
            output: "out.txt"
            container: "{busybox_sif}"
            shell: "cat {{input}} > {{output}}; id -u >> {{output}}; cat /etc/satchel-release >> {{output}}"
    """)
    for root, dirs, files in os.walk(work):
        for name in dirs + files + ["."]:
            os.chown(os.path.join(root, name), test_user.uid, test_user.gid)
    result = client_tools.run(
        [client_bin("snakemake"), "--cores", "1", "--software-deployment-method", "apptainer"],
        cwd=work, timeout=600)
    lines = client_tools.save("snakemake")
    assert result.returncode == 0, f"snakemake failed:\n{result.stderr[-6000:]}"
    out = os.path.join(work, "out.txt")
    assert os.stat(out).st_uid == test_user.uid
    with open(out) as fh:
        assert fh.read().splitlines() == ["snakemake input", str(test_user.uid),
                                          "satchel test image"]
    assert lines[0] == "apptainer --version"     # Snakemake prefers apptainer when both exist
    assert any(line.startswith("apptainer ") and " exec --home " in line and busybox_sif in line
               for line in lines), lines
