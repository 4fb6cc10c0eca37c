"""`caliban results` and `caliban pull` of a local sweep, typed as a user types them: real
Docker engine, real Prefect server, jobs that report real numbers in each way caliban reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import BIN, caliban_runner, wait_for

# A job that reports `acc` = lr * step for steps 1..3, in metrics.jsonl (mode file, plus a
# metrics.json with `loss`) or as CALIBAN_METRICS lines (mode print); --fail_at N exits 3
# after step N; --hold waits for a file `release` in its output folder before it ends.
TRAIN = """\
import json, os, sys, time
argv = sys.argv[1:]
opt = lambda name, default=None: argv[argv.index(name) + 1] if name in argv else default
lr, mode, fail_at = float(opt("--lr")), opt("--mode"), int(opt("--fail_at", "0"))
out = os.environ["CALIBAN_OUTPUT_DIR"]
os.makedirs(out, exist_ok=True)
for step in (1, 2, 3):
    values = {"step": step, "acc": lr * step}
    if mode == "print":
        print("CALIBAN_METRICS " + json.dumps(values), flush=True)
    else:
        with open(os.path.join(out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(values) + "\\n")
    if step == fail_at:
        sys.exit(3)
    if "--hold" in argv:
        while not os.path.exists(os.path.join(out, "release")):
            time.sleep(0.1)
if mode == "file":
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"loss": round(1 - lr * 3, 6)}, f)
"""
SWEEP = [
    {"lr": [0.1, 0.2], "mode": ["file", "print"]},
    {"lr": 0.05, "mode": "file", "fail_at": 2},
]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results-project")
    (root / "trainer").mkdir()
    (root / "trainer" / "__init__.py").write_text("")
    (root / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (root / "requirements.txt").write_text("")
    (root / "exp.json").write_text(json.dumps(SWEEP))
    return root


@pytest.fixture(scope="module")
def cli(project: Path, caliban_home: Path):
    env = {**os.environ, "CALIBAN_HOME": str(caliban_home), "HOME": str(project / "home")}
    env.pop("PREFECT_API_URL", None)
    return caliban_runner(project, env)


@pytest.fixture(scope="module")
def sweep(cli) -> str:
    xgroup = f"results-{uuid.uuid4().hex[:6]}"
    done = cli("run", "--nogpu", "--parallel", "5", "--xgroup", xgroup,
               "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    assert done.returncode == 1, done.stderr  # the fail_at job failed
    return xgroup


def results(cli, xgroup: str, *args: str) -> list[dict]:
    done = cli("results", "--xgroup", xgroup, "--format", "json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_one_row_per_job_with_typed_args_and_the_metrics_each_job_reported(cli, sweep):
    rows = {(r["lr"], r["mode"]): r for r in results(cli, sweep)}
    assert len(rows) == 5
    for lr in (0.1, 0.2):
        by_file, by_print = rows[lr, "file"], rows[lr, "print"]
        assert by_file["state"] == by_print["state"] == "SUCCEEDED"
        assert by_file["acc"] == pytest.approx(lr * 3)  # metrics.jsonl: its last line
        assert by_file["loss"] == pytest.approx(1 - lr * 3)  # metrics.json beside it
        assert by_print["acc"] == pytest.approx(lr * 3)  # from the container's logs
        assert by_print["loss"] is None
        assert by_file["metrics"] == by_print["metrics"] == "final"
    failed = rows[0.05, "file"]
    assert failed["state"] == "FAILED" and failed["fail_at"] == 2
    assert failed["acc"] == pytest.approx(0.1) and failed["step"] == 2  # its last values
    assert all(isinstance(r["attempt"], int) and r["platform"] == "local" for r in rows.values())
    for row in rows.values():  # each job's own folder on the host
        assert row["output"].startswith(str(Path(cli.env["CALIBAN_HOME"]) / "outputs"))


def test_sort_top_objective_and_the_table(cli, sweep):
    best_two = results(cli, sweep, "--sort", "acc", "--top", "2")
    assert [r["acc"] for r in best_two] == [pytest.approx(0.6), pytest.approx(0.6)]
    lowest = results(cli, sweep, "--sort", "acc:min", "--top", "1")
    assert lowest[0]["state"] == "FAILED"

    table = cli("results", "--xgroup", sweep, "--objective", "loss:min")
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split()[:6] == ["name", "state", "attempt", "metrics", "lr", "mode"]
    assert len(lines) == 5 and "output" not in header
    assert lines[0].split()[4:6] == ["0.2", "file"]  # the objective sorts when --sort is not given
    assert "best under loss:min" in table.stderr


def test_csv_and_parquet_hold_the_same_table(cli, sweep, tmp_path):
    import io

    import pandas as pd

    as_csv = pd.read_csv(io.StringIO(cli("results", "--xgroup", sweep, "--format", "csv").stdout))
    out = tmp_path / "r.parquet"
    done = cli("results", "--xgroup", sweep, "--format", "parquet", "--out", str(out))
    assert done.returncode == 0, done.stderr
    as_parquet = pd.read_parquet(out)
    assert list(as_parquet.columns) == list(as_csv.columns)
    assert as_parquet["lr"].dtype.kind == "f" and as_parquet["attempt"].dtype.kind in "iu"
    assert sorted(as_parquet["acc"].round(6)) == sorted(as_csv["acc"].round(6))


def test_bad_input_is_one_line_and_exit_2(cli, sweep):
    for args, says in (
        (("--xgroup", "no-such-group"), "no experiment group named 'no-such-group'"),
        (("--xgroup", sweep, "--sort", "nope"), "--sort: no column 'nope'"),
        (("--xgroup", sweep, "--objective", ":max"), "--objective ':max'"),
    ):
        done = cli("results", *args)
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_pull_copies_each_jobs_folder(cli, sweep, tmp_path):
    dest = tmp_path / "pulled"
    done = cli("pull", "--xgroup", sweep, str(dest))
    assert done.returncode == 0, done.stderr
    assert "files of 3 jobs" in done.stdout  # the print jobs wrote no file
    assert len(list(dest.glob("*/1/metrics.jsonl"))) == 3
    assert len(list(dest.glob("*/1/metrics.json"))) == 2
    one = results(cli, sweep, "--sort", "acc", "--top", "1")[0]["name"]
    only = cli("pull", "--xgroup", sweep, "--job", one, str(tmp_path / "one"))
    assert only.returncode == 0 and "of 1 job " in only.stdout, only.stderr
    missing = cli("pull", "--xgroup", sweep, "--job", "nope", str(tmp_path / "x"))
    assert missing.returncode == 2 and "--job 'nope'" in missing.stderr


def test_the_python_api_returns_the_same_table(cli, sweep):
    code = (
        "import json, sys\n"
        "from caliban_flows import results\n"
        "df = results(sys.argv[1], sort='acc', top=3)\n"
        "by_loss = list(results(sys.argv[1], objective='loss:min')['name'])\n"
        "print(json.dumps({'n': len(df), 'acc': [float(a) for a in df['acc']],"
        " 'columns': list(df.columns), 'by_loss': by_loss}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, sweep], env=cli.env, cwd=cli.cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["n"] == 3 and got["acc"] == sorted(got["acc"], reverse=True)
    assert got["columns"][:4] == ["name", "state", "attempt", "metrics"]
    # In the order the CLI shows under the same objective (best first, no loss last)
    assert got["by_loss"] == [r["name"] for r in results(cli, sweep, "--objective", "loss:min")]


def test_a_running_job_shows_its_latest_values_marked_as_such(cli, project):
    xgroup = f"live-{uuid.uuid4().hex[:6]}"
    running = subprocess.Popen(
        [str(BIN / "caliban"), "run", "--nogpu", "--xgroup", xgroup, "trainer.train",
         "--", "--lr", "0.25", "--mode", "file", "--hold"],
        cwd=project, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def live() -> dict | None:
            done = cli("results", "--xgroup", xgroup, "--format", "json")
            rows = json.loads(done.stdout) if done.returncode == 0 else []
            return rows[0] if rows and rows[0]["metrics"] == "latest" else None

        row = wait_for(live, timeout=240)
        assert row["state"] == "RUNNING" and row["acc"] == pytest.approx(0.25)
        (Path(row["output"]) / "release").write_text("")
        assert running.wait(timeout=120) == 0, running.stderr.read()
        final = results(cli, xgroup)[0]
        assert final["metrics"] == "final" and final["acc"] == pytest.approx(0.75)
    finally:
        running.kill()
