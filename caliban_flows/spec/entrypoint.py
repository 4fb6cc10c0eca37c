"""How a job's code runs in its container, by Caliban's rules for the `module` argument.

- an existing `.py` file runs as `python path.py`;
- any other existing file runs as `/bin/bash path`;
- otherwise a dotted name is a module: `trainer.train` needs `trainer/train.py` and runs as
  `python -m trainer.train`.

Only the first path component is copied into the image (`trainer`), or the whole project
(`.`) for a file at the top level.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from caliban_flows.spec.errors import SpecError

PYTHON_MODULE: tuple[str, ...] = ("python", "-m")
PYTHON_SCRIPT: tuple[str, ...] = ("python",)
BASH_SCRIPT: tuple[str, ...] = ("/bin/bash",)


@dataclass(frozen=True)
class Entrypoint:
    executable: tuple[str, ...]
    target: str
    package_path: str

    @property
    def is_module(self) -> bool:
        return self.executable == PYTHON_MODULE

    @property
    def script_path(self) -> str:
        """The file that runs, relative to the project root."""
        return module_to_path(self.target) if self.is_module else self.target

    def command(self, args: Sequence[str] = ()) -> list[str]:
        return [*self.executable, self.target, *args]


def module_to_path(module: str) -> str:
    return module.replace(".", "/") + ".py"


def resolve_entrypoint(
    module: str, *, is_file: Callable[[str], bool], cwd: str = "."
) -> Entrypoint:
    """Decide how `module` runs; `is_file(relative_path)` says whether a file exists in `cwd`."""
    path = _relative(module, cwd)
    if is_file(path):
        executable = PYTHON_SCRIPT if path.endswith(".py") else BASH_SCRIPT
        return Entrypoint(executable, path, _package_path(path))

    if _is_dotted_name(module) and not module.endswith(".py"):
        script = module_to_path(module)
        if is_file(script):
            return Entrypoint(PYTHON_MODULE, module, _package_path(script))
        raise SpecError(
            f"module '{module}' not found: neither '{path}' nor '{script}' exists in {cwd}; "
            "give a module like 'trainer.train' or a file path relative to that directory"
        )
    raise SpecError(
        f"module '{module}' not found: '{path}' does not exist in {cwd}; "
        "give a module like 'trainer.train' or a file path relative to that directory"
    )


def _relative(module: str, cwd: str) -> str:
    if not module or not module.strip():
        raise SpecError("module is empty: give a module like 'trainer.train' or a file path")
    if module.startswith("/"):
        raise SpecError(
            f"module '{module}' is an absolute path: give a path relative to {cwd}, "
            "where the code is copied from"
        )
    if ".." in module.split("/"):
        raise SpecError(
            f"module '{module}' points outside {cwd} with '..': only files inside the "
            "project directory can be copied into the image"
        )
    path = posixpath.normpath(module)
    if path == ".":
        raise SpecError(f"module '{module}' is a directory, not a file or a module name")
    return path


def _is_dotted_name(module: str) -> bool:
    return all(part.isidentifier() for part in module.split("."))


def _package_path(path: str) -> str:
    head, sep, _ = path.partition("/")
    return head if sep else "."
