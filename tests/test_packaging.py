"""The package as users install it: a built wheel in a fresh virtualenv."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from importlib.metadata import metadata
from pathlib import Path

import pytest

import smsroute

ROOT = Path(__file__).resolve().parent.parent


def test_installed_metadata_matches_the_package() -> None:
    meta = metadata("smsroute")
    assert meta["Name"] == "smsroute"
    assert meta["Version"] == smsroute.__version__
    assert meta["Requires-Python"] == ">=3.11"
    requires = " ".join(meta.get_all("Requires-Dist") or [])
    for dep in ("attrs", "aiohttp", "phonenumbers", "prometheus-client", "pyyaml"):
        assert dep in requires.lower()


def test_providers_import_under_smsroute() -> None:
    import smsroute.providers.twilio as twilio

    assert twilio.TwilioProvider.type_name == "twilio"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        cwd=out,
    )
    (built,) = out.glob("smsroute-*.whl")
    return built


def test_wheel_maps_providers_into_smsroute(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "smsroute/providers/twilio.py" in names
    assert "smsroute/providers/base.py" in names
    assert "smsroute/py.typed" in names
    assert not [n for n in names if n.startswith("providers/")]


@pytest.mark.slow
def test_wheel_installs_and_imports_in_a_fresh_virtualenv(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
    )
    code = (
        "import importlib.util, smsroute, smsroute.providers.twilio as t;"
        "assert importlib.util.find_spec('providers') is None, 'top-level providers module';"
        "from smsroute.testing import FakeTwilio;"
        "print(smsroute.__version__, t.TwilioProvider.type_name)"
    )
    done = subprocess.run(
        [str(python), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.stdout.split() == [smsroute.__version__, "twilio"]
