"""The built wheel, installed in a fresh virtual environment, runs outside the repository.

The wheel is built from a copy of the worktree's package sources (so the build leaves no
``build/`` or ``*.egg-info`` behind in the checkout) and installed with its dependencies from
the package index in the ordinary way, through pip's cache: about 30 s on the development VM with
a warm cache, well inside the bound, so no wheelhouse of the project's ``.venv`` is needed. The
installed ``fxgw`` then runs in an empty folder with an environment that steers no Python to the
repository (no ``PYTHONPATH``, ``VIRTUAL_ENV`` or coverage hooks) and no ``KAFKA_HOME``, and with a
classpath cache of its own, so the demo's broker is resolved by Maven from the ``pom.xml`` that
ships in the wheel (the jars themselves come from ``~/.m2``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.dev.kafka import DEFAULT_VERSION

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
# What a wheel build reads: the package (its gateway/_data links included) and the folders the
# links point to.
SOURCES = (
    "pyproject.toml",
    "README.md",
    "gateway",
    "schemas",
    "policies",
    "deploy",
    "tests/data/events",
)
# Variables that would make the installed interpreter import something else than the wheel, or
# the demo's Kafka come from something else than the launcher files in it.
STEERING = ("PYTHON", "VIRTUAL_ENV", "COV_CORE_", "COVERAGE_", "PYTEST_", "KAFKA_HOME")


def _run(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert 0 == done.returncode, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """A fresh venv with the wheel installed: its folder, a clean environment, a work folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name,
                source / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
            )
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(source)], root)
    (wheel,) = dist.glob("fxgw-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], root)

    env = {k: v for k, v in os.environ.items() if not k.startswith(STEERING)}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", os.defpath)])
    env["FXGW_CACHE_DIR"] = str(root / "cache")
    work = root / "work"
    work.mkdir()
    return venv, env, work


class TestInstalledWheel:
    def test_package_and_data_come_from_the_venv(
        self, installed: tuple[Path, dict[str, str], Path]
    ) -> None:
        """gateway and every shipped folder resolve inside the venv, none inside the repository."""
        venv, env, work = installed
        script = (
            "import gateway, gateway.resources as r\n"
            "for p in (gateway.__file__, r.SCHEMAS, r.POLICIES, r.KAFKA_LAUNCHER, r.EVENTS):"
            " print(p)\n"
        )
        done = _run([str(venv / "bin" / "python"), "-c", script], work, env)
        paths = [Path(line) for line in done.stdout.splitlines()]
        assert 5 == len(paths)
        site = venv.resolve()
        for path in paths:
            assert path.resolve().is_relative_to(site), path
            assert not path.resolve().is_relative_to(REPO), path
        _, schemas, policies, kafka, events = paths
        assert {"1.0", "contract.yaml"} <= {p.name for p in schemas.iterdir()}
        assert {"be-fpj.yaml", "nl-pol.yaml", "us-atf.yaml"} == {p.name for p in policies.iterdir()}
        expected = {"README.md", "kafka-local", "log4j2.properties", "pom.xml"}
        assert expected == {p.name for p in kafka.iterdir()}
        launcher = _run([str(kafka / "kafka-local"), "--help"], work, env)
        assert "python -m gateway.dev.kafka" in launcher.stdout
        assert (events / "seizure_nl_rotterdam_two_firearms.json").is_file()

    def test_schema_check_prints_the_contract_fingerprints(
        self, installed: tuple[Path, dict[str, str], Path]
    ) -> None:
        """fxgw schema check loads the shipped contract and prints its released fingerprints."""
        venv, env, work = installed
        done = _run([str(venv / "bin" / "fxgw"), "schema", "check"], work, env)
        manifest = yaml.safe_load((REPO / "schemas" / "avro" / "contract.yaml").read_text())
        released = manifest["versions"][-1]
        printed = dict(re.findall(r"^(fxgw\.\w+)\s+sha256:([0-9a-f]{64})$", done.stdout, re.M))
        assert {"fxgw.SeizureEvent", "fxgw.TraceRequest", "fxgw.TraceResponse"} <= set(printed)
        assert {n: released["fingerprints"][n] for n in printed} == printed
        folder = re.search(r"^version \S+ \(released, (.+)\)$", done.stdout, re.M)
        assert folder is not None, done.stdout
        assert Path(folder.group(1)).is_relative_to(venv.resolve())

    def test_demo_runs_on_the_shipped_launcher(
        self, installed: tuple[Path, dict[str, str], Path]
    ) -> None:
        """fxgw demo starts Kafka from the shipped pom and ends with every audit trail intact."""
        venv, env, work = installed
        done = _run([str(venv / "bin" / "fxgw"), "demo"], work, env, timeout=300)
        out = done.stdout
        assert re.search(r"^Kafka ready at 127\.0\.0\.1:\d+", out, re.M), out
        assert "signed receipts back for its releases: 3 delivered" in out
        assert "quarantined an envelope: bad_signature" in out
        assert "US-ATF cannot open BE-FPJ's envelope: refused with 'not_for_us'" in out
        for agency in ("NL-POL", "BE-FPJ", "US-ATF"):
            assert re.search(rf"^audit trail of {agency}: intact, ", out, re.M), out
        # resolved by Maven from the wheel's pom into this test's own cache, not a cached
        # classpath: one classpath, under the digest of the shipped pom
        cached = Path(env["FXGW_CACHE_DIR"]) / "kafka" / DEFAULT_VERSION
        assert 1 == len(list(cached.glob("*/classpath.txt")))
        assert [] == [p.name for p in work.iterdir()]
