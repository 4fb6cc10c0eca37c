"""Make tests/fixtures/caliban042/caliban.db with Caliban 0.4.2 itself, on this Docker engine.

    python -m devtools.make_caliban_db [--caliban /tmp/cal042/bin/caliban] [--out FILE]

Caliban 0.4.2 (`python -m venv /tmp/cal042 && /tmp/cal042/bin/pip install caliban==0.4.2`)
builds a small project FROM the offline `python:3.11-slim` and runs, on the local engine:
- `caliban run --experiment_config` of a 2x2 sweep in group `sweep-a`: two jobs succeed, two
  exit 3 (Caliban's launcher reports 1);
- `caliban resubmit --xgroup sweep-a`: the two failed ones again (their attempt 2, failing);
- `caliban run --docker_run_args "--env GREETING=hi"` of one job in group `single`.
Its history database is then copied to --out. Caliban's image build adds the caller as a user
of the image, which fails for root: run as root, Caliban runs as --uid (default 1000) with the
Docker socket's group.
"""

from __future__ import annotations

import argparse
import grp
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Caliban records its project folder's path: a fixed one, so a test can put the folder back.
SCRATCH = Path("/tmp/caliban042-fixture")
PROJECT = SCRATCH / "project"
OUT = ROOT / "tests" / "fixtures" / "caliban042" / "caliban.db"
TRAINER = """\
import sys
args = sys.argv[1:]
print("trainer args:", args)
sys.exit(3 if args[args.index("--fail") + 1] == "1" else 0) if "--fail" in args else None
"""
# Caliban's launcher (its image's entry point) imports google.auth, which its own base images
# carried; the offline python image gets it from requirements.txt.
FILES = {
    "trainer.py": TRAINER,
    "requirements.txt": "google-auth\n",
    ".calibanconfig.json": '{"base_image": "python:3.11-slim"}\n',
    "exp.json": '{"learning_rate": [0.1, 0.01], "fail": [0, 1]}\n',
}
STEPS = [
    ["run", "--nogpu", "--experiment_config", "exp.json", "--xgroup", "sweep-a", "trainer.py",
     "--", "--epochs", "2"],
    ["resubmit", "--xgroup", "sweep-a"],
    ["run", "--nogpu", "--xgroup", "single", "--docker_run_args", "--env GREETING=hi",
     "trainer.py", "--", "--epochs", "1"],
]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caliban", default="/tmp/cal042/bin/caliban")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--uid", type=int, default=1000, help="whom Caliban runs as, for root")
    options = parser.parse_args()
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    try:
        scratch = str(SCRATCH)
        project, home = SCRATCH / "project", SCRATCH / "home"
        project.mkdir()
        home.mkdir()
        for name, text in FILES.items():
            (project / name).write_text(text)
        prefix: list[str] = []
        if os.getuid() == 0:
            group = grp.getgrnam("docker").gr_gid
            prefix = ["setpriv", f"--reuid={options.uid}", f"--regid={options.uid}",
                      f"--groups={group}"]  # fmt: skip
            os.chmod(scratch, 0o755)
            for path in (project, home, *project.iterdir()):
                os.chown(path, options.uid, options.uid)
        env = {**os.environ, "HOME": str(home), "USER": "ada", "LOGNAME": "ada"}
        env.pop("CALIBAN_DB_URL", None)
        for step in STEPS:
            print("+ caliban", " ".join(step), file=sys.stderr)
            done = subprocess.run([*prefix, options.caliban, *step], cwd=project, env=env,
                                  input="y\n", text=True, capture_output=True)  # fmt: skip
            if "Traceback" in done.stderr and "CalledProcessError" not in done.stderr:
                sys.stderr.write(done.stderr[-3000:])
                return 1
        options.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(home / ".caliban" / "caliban.db", options.out)
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    print(f"wrote {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
