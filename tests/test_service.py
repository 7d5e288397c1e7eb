"""`mlxpin service`: generated units, through the real CLI, into a temporary HOME."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Invoked, invoke

HF_TOKEN = "hf_secretTOKENvalue1234567890"
API_KEY = "sk-mlxpin-secret-key-0987654321"
MANIFEST = """\
version = 1

[models.tiny]
api_label = "tiny-chat"
port = 8181

[models.tiny.launch]
path = "./models/tiny"
"""


@dataclass
class Env:
    tmp: Path
    home: Path
    manifest: Path
    environ: dict[str, str | None]

    def run(self, *args: str) -> Invoked:
        return invoke(list(args), self.environ)

    def json(self, *args: str, code: int = 0) -> dict[str, Any]:
        result = self.run(*args, "--manifest", str(self.manifest), "--json")
        assert result.exit_code == code, result.output
        data: dict[str, Any] = json.loads(result.stdout)
        return data


@pytest.fixture
def env(tmp_path: Path) -> Env:
    home = tmp_path / "home"
    home.mkdir()
    project = tmp_path / "my project"  # a space, to exercise quoting
    project.mkdir()
    manifest = project / "manifest.toml"
    manifest.write_text(MANIFEST)
    environ: dict[str, str | None] = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "HF_HOME": str(tmp_path / "hf home"),
        "MLXPIN_HOME": str(tmp_path / "state"),
        "HF_HUB_CACHE": None,
        "HUGGINGFACE_HUB_CACHE": None,
        "MLXPIN_LOCK_DIR": None,
        "MLXPIN_MANIFEST": None,
        "HF_TOKEN": HF_TOKEN,
        "MLXPIN_API_KEY": API_KEY,
    }
    return Env(tmp_path, home, manifest, environ)


def systemd_keys(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit(env: Env) -> None:
    data = env.json("service", "show", "tiny", "--platform", "linux")
    text = data["content"]
    assert HF_TOKEN not in text and API_KEY not in text
    assert "HF_TOKEN" not in text
    keys = systemd_keys(text)
    service = keys["Service"]
    manifest = str(env.manifest)
    lock_dir = str(env.manifest.parent / "lock")
    assert service["ExecStart"] == [
        f'{sys.executable} -m mlxpin launch tiny --manifest "{manifest}" --lock-dir "{lock_dir}"'
    ]
    assert Path(sys.executable).is_absolute()
    env_lines = service["Environment"]
    hf_home = env.tmp / "hf home"
    assert f'"HF_HOME={hf_home}"' in env_lines
    assert f'"HF_HUB_CACHE={hf_home / "hub"}"' in env_lines
    assert f'"MLXPIN_HOME={env.tmp / "state"}"' in env_lines
    env_file = env.home / ".config" / "mlxpin" / "tiny.env"
    assert service["EnvironmentFile"] == [f"-{env_file}"]
    log = env.tmp / "state" / "logs" / "tiny.log"
    assert service["StandardOutput"] == [f"append:{log}"]
    assert service["StandardError"] == [f"append:{log}"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"] == ["5"]
    assert service["RestartPreventExitStatus"] == ["65 66 77 78"]
    assert service["KillMode"] == ["mixed"]
    assert "TimeoutStopSec" in service and "User" not in service
    assert "StartLimitIntervalSec" in keys["Unit"] and "StartLimitBurst" in keys["Unit"]
    assert "After" not in keys["Unit"]
    # a cache on a disk that mounts late: wait for it (#26 item 9)
    state = env.tmp / "state"
    assert keys["Unit"]["RequiresMountsFor"] == [f'"{hf_home / "hub"}" {state}']
    assert keys["Install"]["WantedBy"] == ["default.target"]
    assert "MLXPIN_API_KEY=" in text  # documented in a comment, without a value
    assert data["installed"] is False
    assert data["path"] == str(env.home / ".config/systemd/user/mlxpin-tiny.service")


def test_systemd_system_unit(env: Env) -> None:
    data = env.json("service", "show", "tiny", "--platform", "linux", "--system")
    keys = systemd_keys(data["content"])
    assert keys["Install"]["WantedBy"] == ["multi-user.target"]
    assert keys["Service"]["User"] and keys["Service"]["EnvironmentFile"] == [
        "-/etc/mlxpin/tiny.env"
    ]
    assert data["path"] == "/etc/systemd/system/mlxpin-tiny.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(env: Env) -> None:
    text = env.json("service", "show", "tiny", "--platform", "linux")["content"]
    unit = env.tmp / "mlxpin-tiny.service"
    unit.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert str(unit) not in done.stderr, done.stderr  # no "Unknown key ..., ignoring"


def test_launchd_plist(env: Env) -> None:
    data = env.json("service", "show", "tiny", "--platform", "macos")
    text = data["content"]
    assert HF_TOKEN not in text and API_KEY not in text
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "io.mlxpin.tiny"
    assert plist["ProgramArguments"] == [
        sys.executable,
        "-m",
        "mlxpin",
        "launch",
        "tiny",
        "--manifest",
        str(env.manifest),
        "--lock-dir",
        str(env.manifest.parent / "lock"),
    ]
    assert all(Path(a).is_absolute() for a in plist["ProgramArguments"][::6])
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] >= 10
    assert plist["RunAtLoad"] is True
    assert "RequiresMountsFor has no equivalent" in text  # KeepAlive retries the 75
    log = str(env.tmp / "state" / "logs" / "tiny.log")
    assert plist["StandardOutPath"] == log and plist["StandardErrorPath"] == log
    assert plist["EnvironmentVariables"]["HF_HOME"] == str(env.tmp / "hf home")
    assert set(plist["EnvironmentVariables"]) == {
        "HF_HOME",
        "HF_HUB_CACHE",
        "MLXPIN_HOME",
        "HF_HUB_OFFLINE",
        "PYTHONUNBUFFERED",
    }
    assert "UserName" not in plist
    assert data["path"] == str(env.home / "Library/LaunchAgents/io.mlxpin.tiny.plist")
    system = env.json("service", "show", "tiny", "--platform", "macos", "--system")
    assert plistlib.loads(system["content"].encode())["UserName"]
    assert system["path"] == "/Library/LaunchDaemons/io.mlxpin.tiny.plist"


@pytest.mark.parametrize("platform", ["linux", "macos"])
def test_install_and_uninstall(env: Env, platform: str) -> None:
    printed = env.json("service", "install", "tiny", "--platform", platform, "--print")
    assert printed["written"] is False
    target = Path(printed["path"])
    assert not target.exists()
    assert not (env.tmp / "state").exists()

    result = env.run(
        "service", "install", "tiny", "--platform", platform, "--manifest", str(env.manifest)
    )
    assert result.exit_code == 0, result.output
    assert target.read_text() == printed["content"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert (env.tmp / "state" / "logs").is_dir()
    # Not ready yet: a warning naming the fix, not a failure.
    assert "mlxpin lock tiny" in result.stderr
    expected = (
        "systemctl --user daemon-reload && systemctl --user enable --now mlxpin-tiny"
        if platform == "linux"
        else f"launchctl bootstrap gui/$(id -u) {target}"
    )
    assert expected in result.stdout

    again = env.json("service", "install", "tiny", "--platform", platform)
    assert again["written"] is False and again["changed"] is False
    assert env.json("service", "show", "tiny", "--platform", platform)["up_to_date"] is True

    dry = env.run("service", "uninstall", "tiny", "--platform", platform, "--print", "--json")
    assert dry.exit_code == 0 and target.exists()
    gone = env.run("service", "uninstall", "tiny", "--platform", platform, "--json")
    assert gone.exit_code == 0, gone.output
    assert json.loads(gone.stdout)["removed"] is True and not target.exists()
    twice = env.run("service", "uninstall", "tiny", "--platform", platform, "--json")
    assert twice.exit_code == 0 and json.loads(twice.stdout)["existed"] is False


def fake_tool(env: Env, name: str, code: int) -> Path:
    """A stand-in for systemctl/launchctl that records its argv."""
    bindir = env.tmp / "bin"
    bindir.mkdir(exist_ok=True)
    log = env.tmp / f"{name}.calls"
    tool = bindir / name
    tool.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"print('Failed to connect to bus', file=sys.stderr) if {code} else None\n"
        f"sys.exit({code})\n"
    )
    tool.chmod(0o755)
    env.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    return log


def test_enable_runs_the_service_manager(env: Env) -> None:
    log = fake_tool(env, "systemctl", 0)
    data = env.json("service", "install", "tiny", "--platform", "linux", "--enable")
    assert log.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable mlxpin-tiny",
        "--user restart mlxpin-tiny",
    ]
    assert [r["returncode"] for r in data["ran"]] == [0, 0, 0]
    log.unlink()
    result = env.run("service", "uninstall", "tiny", "--platform", "linux", "--disable")
    assert result.exit_code == 0, result.output
    assert log.read_text().splitlines() == [
        "--user disable --now mlxpin-tiny",
        "--user daemon-reload",
    ]


def test_enable_failure_is_reported(env: Env) -> None:
    fake_tool(env, "systemctl", 1)
    result = env.run(
        "service",
        "install",
        "tiny",
        "--platform",
        "linux",
        "--enable",
        "--manifest",
        str(env.manifest),
    )
    assert result.exit_code == 69
    assert "systemctl --user daemon-reload` failed (exit 1): Failed to connect to bus" in (
        result.stderr
    )
    assert "the unit file is in place" in result.stderr
    assert (env.home / ".config/systemd/user/mlxpin-tiny.service").exists()


def test_validation(env: Env) -> None:
    unknown = env.run(
        "service", "install", "nope", "--platform", "linux", "--manifest", str(env.manifest)
    )
    assert unknown.exit_code == 2 and "no model named 'nope'" in unknown.stderr
    env.manifest.write_text(MANIFEST.replace('path = "./models/tiny"', 'repo = "tiny"'))
    bad = env.run(
        "service", "install", "tiny", "--platform", "linux", "--manifest", str(env.manifest)
    )
    assert bad.exit_code == 78 and "bare name" in bad.stderr
    assert not (env.home / ".config").exists()


def test_an_api_key_file_path_is_carried_but_never_the_key(tmp_path: Path) -> None:
    import plistlib

    from mlxpin.config import load_settings
    from mlxpin.service.units import build_spec

    (tmp_path / "manifest.toml").write_text(
        'version = 1\n[models.m]\napi_label = "m"\n[models.m.launch]\nrepo = "o/n"\n'
    )
    key = tmp_path / "key"
    key.write_text("sk-SECRET-value\n")
    environ = {"HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    settings = load_settings(environ, cwd=tmp_path)
    with_file = {**environ, "MLXPIN_API_KEY_FILE": str(key)}
    built = build_spec(settings, "m", platform="macos", system=False, environ=with_file)
    plist = plistlib.loads(built.content.encode())
    assert plist["EnvironmentVariables"]["MLXPIN_API_KEY_FILE"] == str(key)
    assert "SECRET" not in built.content
    with_key = {**environ, "MLXPIN_API_KEY": "sk-SECRET-value"}
    built = build_spec(settings, "m", platform="macos", system=False, environ=with_key)
    assert "MLXPIN_API_KEY_FILE" in " ".join(built.warnings)
    assert "SECRET" not in built.content


def test_system_unit_under_sudo_runs_as_the_user_with_their_cache(tmp_path: Path) -> None:
    import pwd

    from mlxpin.config import load_settings
    from mlxpin.service.units import build_spec

    other = next(
        (p for p in pwd.getpwall() if p.pw_uid != os.getuid() and p.pw_dir.startswith("/")),
        None,
    )
    if other is None:
        pytest.skip("no second account on this machine")
    (tmp_path / "manifest.toml").write_text(
        'version = 1\n[models.m]\napi_label = "m"\n[models.m.launch]\nrepo = "o/n"\n'
    )
    environ = {"HOME": str(tmp_path), "SUDO_USER": other.pw_name}
    settings = load_settings(environ, cwd=tmp_path)
    built = build_spec(settings, "m", platform="linux", system=True, environ=environ)
    assert f"User={other.pw_name}" in built.content
    assert f'HF_HOME={other.pw_dir}/.cache/huggingface"' in built.content
    assert str(tmp_path / ".cache") not in built.content


def test_serve_as_the_boot_unit(env: Env) -> None:
    data = env.json("service", "show", "--serve", "--platform", "linux")
    service = systemd_keys(data["content"])["Service"]
    manifest, lock_dir = str(env.manifest), str(env.manifest.parent / "lock")
    assert service["ExecStart"] == [
        f'{sys.executable} -m mlxpin serve --manifest "{manifest}" --lock-dir "{lock_dir}"'
    ]
    assert service["RestartPreventExitStatus"] == ["65 66 77 78"]  # same restart rules
    assert "Boots `mlxpin serve` offline" in data["content"]
    # the regenerate command it names is one the CLI accepts (not `service install serve`)
    assert "# Generated by `mlxpin service install --serve`." in data["content"]
    assert data["path"] == str(env.home / ".config/systemd/user/mlxpin-serve.service")
    # not locked here: the same preflight `serve` runs at boot says so, as a warning
    assert any("mlxpin lock tiny" in w for w in data["warnings"])
    plist = env.json("service", "show", "--serve", "--platform", "macos")
    program = plistlib.loads(plist["content"].encode())["ProgramArguments"]
    assert program[2:4] == ["mlxpin", "serve"] and "tiny" not in program
    assert "Generated by `mlxpin service install` (its serve option) as" in plist["content"]
    installed = env.json("service", "install", "--serve", "--platform", "linux")
    assert Path(installed["path"]).name == "mlxpin-serve.service"
    removed = env.run("service", "uninstall", "--serve", "--platform", "linux", "--json")
    assert json.loads(removed.stdout)["removed"], removed.output
    both = env.run("service", "show", "tiny", "--serve", "--manifest", str(env.manifest))
    assert both.exit_code == 2
