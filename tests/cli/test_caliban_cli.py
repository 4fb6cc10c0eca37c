"""`caliban` as a user types it, on real files in a temp dir, run as a subprocess."""

from __future__ import annotations

import ast
import json
import re

import pytest
import yaml

# Every flag Caliban's reference documents, per command, in its underscore spelling.
FLAGS = {
    ("shell",): "--nogpu --cloud_key --extras --no_cache --image_id --docker_run_args --shell "
    "--bare",
    ("notebook",): "--nogpu --cloud_key --extras --no_cache --docker_run_args -p --port -jv "
    "--jupyter_version --lab --bare --image_id",
    ("build",): "--nogpu --cloud_key --extras --no_cache -d --dir",
    ("run",): "--nogpu --cloud_key --extras --no_cache -d --dir --experiment_config --dry_run "
    "--image_id --docker_run_args --xgroup",
    ("cloud",): "--nogpu --cloud_key --extras --no_cache -d --dir --experiment_config --dry_run "
    "--image_tag --project_id --region --machine_type --gpu_spec --tpu_spec --force --name -l "
    "--label --xgroup",
    ("cluster", "ls"): "--project_id --cloud_key --cluster_name --zone",
    ("cluster", "create"): "--project_id --cloud_key --cluster_name --zone --dry_run "
    "--release_channel --single_zone",
    ("cluster", "delete"): "--project_id --cloud_key --cluster_name --zone",
    ("cluster", "job", "submit"): "--cluster_name --nogpu --cloud_key --extras --no_cache -d "
    "--dir --image_tag --project_id --min_cpu --min_mem --gpu_spec --tpu_spec --tpu_driver "
    "--nonpreemptible_tpu --force --name --experiment_config -l --label --nonpreemptible "
    "--dry_run --export --xgroup",
    ("cluster", "job", "submit_file"): "--cluster_name --cloud_key --project_id --dry_run",
    ("status",): "--xgroup --max_jobs --format",
    ("stop",): "--xgroup --dry_run --yes",
    ("resubmit",): "--xgroup --dry_run --all_jobs --project_id --cloud_key --yes",
}


@pytest.mark.parametrize("command", sorted(FLAGS), ids=" ".join)
def test_every_documented_flag_is_accepted(caliban, command):
    got = caliban(*command, "--helpfull")
    assert got.code == 0, got.err
    shown = set(re.findall(r"(?<![\w-])(--?[a-z][a-z_-]*)", got.out))
    missing = [f for f in FLAGS[command].split() if f not in shown]
    assert not missing, missing


def test_top_level_help_lists_all_commands(caliban):
    got = caliban("--help")
    assert got.code == 0
    for name in [
        "shell",
        "notebook",
        "build",
        "run",
        "cloud",
        "cluster",
        "status",
        "stop",
        "resubmit",
    ]:
        assert re.search(rf"^\s+{name}\s", got.out, re.M), name
    assert caliban("--version").out.strip().startswith("caliban ")


def cloud_jobs(out: str) -> list[dict]:
    """Parse `caliban cloud --dry_run` output into one dict per job."""
    jobs: dict[int, dict] = {}
    for line in out.splitlines():
        m = re.match(r"Job (\d+) - (\w[\w ]*?): (.*)$", line)
        if not m:
            continue
        job = jobs.setdefault(int(m[1]), {})
        key, value = m[2], m[3]
        if key == "Experiment arguments":
            job["args"] = ast.literal_eval(value)
        elif key == "labels":
            job["labels"] = ast.literal_eval(value)
        elif key == "Accelerator":
            accel, rest = value.split("}, ", 1)
            job["accelerator"] = ast.literal_eval(accel + "}")
            job.update(dict(re.findall(r"(\w+): '([^']*)'", rest)))
        elif key == "jobId":
            job["jobId"], job["image"] = re.match(r"(\S+), image: (.*)", value).groups()
    return [jobs[k] for k in sorted(jobs)]


def test_cloud_dry_run_sweep(caliban, project):
    (project / "exp.json").write_text(
        '# sweep\n{"lr": [0.01, 0.001], "epochs": 3, "[a,b]": [[1, 2], [3, 4]], "fast": true}'
    )
    got = caliban(
        "cloud", "--dry_run", "--nogpu", "--project_id", "my-proj", "--xgroup", "g1",
        "--experiment_config", "exp.json", "-l", "team=Vision.Lab", "--name", "Nightly",
        "trainer.train", "--", "--seed", "7",
    )  # fmt: skip
    assert got.code == 0, got.err
    jobs = cloud_jobs(got.out)
    assert len(jobs) == 4
    # Caliban 0.4.2: first key fastest; job flags sorted by key; `--` args first.
    assert [j["args"] for j in jobs] == [
        ["--seed", "7", "--a", "1", "--b", "2", "--epochs", "3", "--fast", "--lr", "0.01"],
        ["--seed", "7", "--a", "1", "--b", "2", "--epochs", "3", "--fast", "--lr", "0.001"],
        ["--seed", "7", "--a", "3", "--b", "4", "--epochs", "3", "--fast", "--lr", "0.01"],
        ["--seed", "7", "--a", "3", "--b", "4", "--epochs", "3", "--fast", "--lr", "0.001"],
    ]
    first = jobs[0]
    assert first["jobId"] == "Nightly_1"
    assert first["accelerator"] == {"count": 0, "type": "ACCELERATOR_TYPE_UNSPECIFIED"}
    assert first["machine"] == "n1-highcpu-32" and first["region"] == "us-central1"
    assert first["labels"] == {
        "gpu_enabled": "false",
        "tpu_enabled": "false",
        "job_name": "nightly",
        "docker_image": "dry_run_tag",
        "team": "vision_lab",
        "seed": "7",
        "a": "1",
        "b": "2",
        "epochs": "3",
        "fast": "",
        "lr": "0_01",
    }
    assert "xgroup 'g1'" in got.out and "my-proj" in got.out


def test_cloud_defaults_gpu_tpu_and_image_tag(caliban):
    gpu = cloud_jobs(caliban("cloud", "--dry_run", "--project_id", "p", "trainer.train").out)
    assert gpu[0]["accelerator"] == {"count": 1, "type": "NVIDIA_TESLA_P100"}
    assert gpu[0]["machine"] == "n1-standard-8"
    assert gpu[0]["labels"]["gpu_enabled"] == "true"

    tpu = caliban(
        "cloud", "--dry_run", "--project_id", "p", "--tpu_spec", "8xV3",
        "--image_tag", "gcr.io/p/img:1", "trainer.train",
    )  # fmt: skip
    assert tpu.code == 0, tpu.err
    job = cloud_jobs(tpu.out)[0]
    assert "CPU mode" in tpu.out  # a TPU alone means CPU mode, as in Caliban
    assert job["accelerator"]["count"] == 0
    assert job["labels"]["tpu_enabled"] == "true" and job["labels"]["gpu_enabled"] == "false"
    assert job["image"] == "gcr.io/p/img:1"

    env = caliban("cloud", "--dry_run", "trainer.train", env={"PROJECT_ID": "env-proj"})
    assert "env-proj" in env.out


def test_cloud_project_from_gcloud_config(caliban, project):
    conf = project / ".gc" / "configurations"
    conf.mkdir(parents=True)
    (conf / "config_default").write_text("[core]\nproject = from-gcloud\n[ai]\nregion = us-east1\n")
    got = caliban("cloud", "--dry_run", "--nogpu", "trainer.train")
    assert got.code == 0, got.err
    assert "from-gcloud" in got.out
    assert cloud_jobs(got.out)[0]["region"] == "us-east1"


def test_experiment_config_from_stdin(caliban):
    got = caliban(
        "cloud", "--dry_run", "--nogpu", "--project_id", "p",
        "--experiment_config", "STDIN", "trainer.train",
        stdin='[{"x": [1, 2, 3]}, {"y": "z"}]',
    )  # fmt: skip
    assert [j["args"] for j in cloud_jobs(got.out)] == [
        ["--x", "1"],
        ["--x", "2"],
        ["--x", "3"],
        ["--y", "z"],
    ]


@pytest.mark.parametrize(
    "module, command",
    [
        ("trainer.train", "python -m trainer.train --k v"),
        ("trainer/train.py", "python trainer/train.py --k v"),
        ("top.py", "python top.py --k v"),
        ("run.sh", "/bin/bash run.sh --k v"),
    ],
)
def test_run_dry_run_entrypoints(caliban, module, command):
    got = caliban("run", "--dry_run", "--nogpu", "--xgroup", "x", module, "--", "--k", "v")
    assert got.code == 0, got.err
    assert f"Job 1 - Command: {command}" in got.out


def test_run_dry_run_with_image_id_and_docker_args(caliban):
    got = caliban(
        "run", "--dry_run", "--nogpu", "--image_id", "abc123",
        "--docker_run_args", "--volume /data:/data --env 'A=b c'", "trainer.train",
    )  # fmt: skip
    assert got.code == 0, got.err
    # An -e value is never printed (nor recorded): docker takes it from the environment.
    assert "--volume /data:/data --env A abc123" in got.out
    assert "b c" not in got.out


def test_cluster_submit_dry_run(caliban):
    got = caliban(
        "cluster", "job", "submit", "--dry_run", "--gpu_spec", "2xT4", "--min_mem", "8000",
        "--nonpreemptible", "--xgroup", "k", "trainer.train", "--", "--a", "1",
    )  # fmt: skip
    assert got.code == 0, got.err
    assert "Job 1 - Experiment arguments: ['--a', '1']" in got.out
    manifest = yaml.safe_load(got.out.split("\n---\n")[1].split("\n\n")[0])
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "1500m", "memory": "8000Mi"},
        "limits": {"nvidia.com/gpu": "2"},
    }
    assert container["args"] == ["--a", "1"]
    assert manifest["metadata"]["namespace"] == "default"  # no kubeconfig: the default one


def test_flagfiles_nest_and_split_like_the_docs(caliban, project):
    (project / "v100.flags").write_text(
        "# big GPUs\n--gpu_spec 8xV100\n--machine_type=n1-highcpu-96\n// another comment\n"
    )
    (project / "all.flags").write_text("--flagfile v100.flags\n--region us-central1\n")
    got = caliban(
        "cloud", "--flagfile", "all.flags", "--dry_run", "--project_id", "p", "trainer.train"
    )
    assert got.code == 0, got.err
    job = cloud_jobs(got.out)[0]
    assert job["accelerator"] == {"count": 8, "type": "NVIDIA_TESLA_V100"}
    assert job["machine"] == "n1-highcpu-96"


def test_flagfile_after_double_dash_is_a_script_argument(caliban):
    got = caliban("run", "--dry_run", "--nogpu", "trainer.train", "--", "--flagfile", "mine.txt")
    assert got.code == 0, got.err
    assert "['--flagfile', 'mine.txt']" in got.out


def test_too_many_labels(caliban):
    labels = [a for i in range(62) for a in ("-l", f"k{i}=v")]
    got = caliban("cloud", "--dry_run", "--nogpu", "--project_id", "p", *labels, "trainer.train")
    assert got.code == 2
    assert "at most 64" in got.err


BAD_INPUTS = {
    "flags after module": (
        ["cloud", "--project_id", "p", "trainer.train", "--nogpu"],
        "before the module",
    ),
    "nogpu with gpu_spec": (["cloud", "--nogpu", "--gpu_spec", "1xT4", "trainer.train"], "--nogpu"),
    "unknown gpu": (["cloud", "--gpu_spec", "1xV1000", "trainer.train"], "did you mean"),
    "no x in gpu spec": (["cloud", "--gpu_spec", "V100", "trainer.train"], "V100"),
    "impossible count": (["cloud", "--gpu_spec", "3xV100", "trainer.train"], "1, 2, 4, 8"),
    "machine without that gpu": (
        ["cloud", "--gpu_spec", "2xV100", "--machine_type", "n1-standard-96", "trainer.train"],
        "n1-highmem-2",
    ),
    "unknown machine": (
        ["cloud", "--nogpu", "--machine_type", "n1-standrd-8", "trainer.train"],
        "n1-standard-8",
    ),
    "region without accelerator": (
        ["cloud", "--gpu_spec", "1xV100", "--region", "europe-west1", "trainer.train"],
        "europe-west1",
    ),
    "unknown region": (["cloud", "--nogpu", "--region", "us-centrl1", "trainer.train"], "us-"),
    "bad tpu count": (["cloud", "--tpu_spec", "7xV3", "trainer.train"], "7"),
    "label without value": (["cloud", "--nogpu", "-l", "novalue", "trainer.train"], "KEY=VALUE"),
    "label with no usable key": (["cloud", "--nogpu", "-l", "!!=x", "trainer.train"], "!!"),
    "missing module": (["run", "--dry_run", "trainer.nope"], "trainer.nope"),
    "module outside project": (["run", "--dry_run", "../x.py"], "x.py"),
    "missing config": (
        ["run", "--dry_run", "--experiment_config", "no.json", "trainer.train"],
        "no.json",
    ),
    "malformed config": (
        ["run", "--dry_run", "--experiment_config", "bad.json", "trainer.train"],
        "not valid JSON",
    ),
    "missing dir": (["run", "--dry_run", "-d", "nodir", "trainer.train"], "nodir"),
    "bad shell": (["shell", "--shell", "fish"], "fish"),
    "bad export": (["cluster", "job", "submit", "--export", "x.txt", "trainer.train"], ".yaml"),
    "bad job file": (["cluster", "job", "submit_file", "job.txt"], ".yaml"),
    "unknown option": (["cloud", "--bogus", "trainer.train"], "--bogus"),
    "unknown command": (["launch"], "launch"),
    "bad max_jobs": (["status", "--max_jobs", "-1"], "--max_jobs"),
    "bad format": (["status", "--format", "xml"], "xml"),
    "no project": (["cloud", "--dry_run", "--nogpu", "trainer.train"], "--project_id"),
    "flagfile cycle": (["run", "--flagfile", "a.flags", "trainer.train"], "cycle"),
    "unbalanced docker args": (
        ["run", "--dry_run", "--docker_run_args", "--env 'A=1", "trainer.train"],
        "--docker_run_args",
    ),
    "bad calibanconfig": (["run", "--dry_run", "trainer.train"], "apt_packages"),
    "bad timeout": (["cloud", "--nogpu", "--timeout", "soon", "trainer.train"], "--timeout"),
    "image vertex cannot pull": (
        ["cloud", "--nogpu", "--image_tag", "docker.io/me/img:1", "trainer.train"],
        "Artifact Registry",
    ),
    "bad max_qps": (["cloud", "--nogpu", "--max_qps", "0", "trainer.train"], "--max_qps"),
    "bad max_running": (["run", "--max_running", "0", "trainer.train"], "--max_running"),
    "pool without max_running": (
        ["cloud", "--dry_run", "--nogpu", "--pool", "gpus", "trainer.train"],
        "--max_running",
    ),
    "bad pool name": (
        ["run", "--dry_run", "--max_running", "2", "--pool", "My Pool", "trainer.train"],
        "--pool",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(caliban, project, case):
    args, needle = BAD_INPUTS[case]
    (project / "bad.json").write_text('{"a": [1, 2,, 3]}')
    (project / "a.flags").write_text("--flagfile b.flags\n")
    (project / "b.flags").write_text("--flagfile a.flags\n")
    if case == "bad calibanconfig":
        (project / ".calibanconfig.json").write_text('{"apt_packages": 5}')
    got = caliban(*args, env={"PROJECT_ID": "" if case == "no project" else "p"})
    assert got.code == 2, (got.out, got.err)
    assert got.err.count("\n") == 1, got.err
    assert "Traceback" not in got.err
    assert got.err.startswith("caliban")
    assert needle in got.err, got.err


def test_cloud_dry_run_prints_each_custom_job(caliban, project):
    got = caliban(
        "cloud", "--dry_run", "--project_id", "p", "--region", "us-east1", "--gpu_spec", "1xT4",
        "--spot", "--timeout", "2h", "--service_account", "sa@p.iam.gserviceaccount.com",
        "--xgroup", "g", "--image_tag", "us-east1-docker.pkg.dev/p/r/img:1", "trainer.train",
    )  # fmt: skip
    assert got.code == 0, got.err
    [line] = [x for x in got.out.splitlines() if x.startswith("Job 1 - CustomJob: ")]
    spec = json.loads(line.removeprefix("Job 1 - CustomJob: "))
    pool = spec["job_spec"]["worker_pool_specs"][0]
    assert pool["machine_spec"] == {"machine_type": "n1-standard-8",
                                    "accelerator_type": "NVIDIA_TESLA_T4",
                                    "accelerator_count": 1}  # fmt: skip
    assert pool["container_spec"]["image_uri"] == "us-east1-docker.pkg.dev/p/r/img:1"
    assert spec["job_spec"]["scheduling"] == {"timeout": "7200s", "strategy": "SPOT"}
    assert spec["job_spec"]["service_account"] == "sa@p.iam.gserviceaccount.com"
    assert {"caliban_xgroup_id", "caliban_job_key", "caliban_attempt"} <= set(spec["labels"])
    assert "Parent: projects/p/locations/us-east1" in got.out


def test_dry_run_touches_nothing(caliban, project):
    before = sorted(p.name for p in project.rglob("*"))
    got = caliban("run", "--dry_run", "--nogpu", "--xgroup", "g", "trainer.train")
    assert got.code == 0
    assert sorted(p.name for p in project.rglob("*")) == before
