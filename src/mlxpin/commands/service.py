"""`mlxpin service install|uninstall|show`: boot units for `mlxpin launch NAME` or
`mlxpin serve`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from mlxpin.config import Settings
from mlxpin.service import units
from mlxpin.service.units import BuiltSpec, InstallResult, Platform, UninstallResult
from mlxpin.util.jsonable import Done, fields_json

_R = TypeVar("_R", InstallResult, UninstallResult)


@dataclass(frozen=True)
class _UnitChange(Done, Generic[_R]):
    """Installing or uninstalling a unit: its result's fields."""

    result: _R

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, **fields_json(self.result)}


class Installed(_UnitChange[InstallResult]):
    pass


class Uninstalled(_UnitChange[UninstallResult]):
    pass


@dataclass(frozen=True)
class Shown(Done):
    built: BuiltSpec
    installed: bool
    up_to_date: bool

    def to_json(self) -> dict[str, Any]:
        spec = self.built.spec
        return {
            "ok": True,
            "name": spec.name,
            "platform": spec.platform,
            "system": spec.system,
            "path": str(self.built.path),
            "content": self.built.content,
            "argv": list(spec.argv()),
            "environment": dict(spec.environment),
            "log_file": str(spec.log_file),
            "installed": self.installed,
            "up_to_date": self.up_to_date,
            "warnings": list(self.built.warnings),
        }


@dataclass(frozen=True)
class UnitRequest:
    """Which unit, where, and how it runs: what `install` and `show` share."""

    name: str
    platform: Platform | None
    system: bool
    log_file: Path | None = None
    env_file: Path | None = None
    run_as: str | None = None
    serve: bool = False  # the unit boots `mlxpin serve` (name: "serve")


def build(settings: Settings, request: UnitRequest, environ: Mapping[str, str]) -> BuiltSpec:
    return units.build_spec(
        settings,
        request.name,
        platform=request.platform,
        system=request.system,
        environ=environ,
        log_file=request.log_file,
        env_file=request.env_file,
        run_as=request.run_as,
        serve=request.serve,
    )


def install(
    settings: Settings,
    request: UnitRequest,
    environ: Mapping[str, str],
    *,
    print_only: bool,
    enable: bool,
) -> Installed:
    built = build(settings, request, environ)
    return Installed(units.install(built, print_only=print_only, enable=enable))


def uninstall(
    request: UnitRequest, environ: Mapping[str, str], *, print_only: bool, disable: bool
) -> Uninstalled:
    result = units.uninstall(
        request.name,
        platform=request.platform,
        system=request.system,
        environ=environ,
        print_only=print_only,
        disable=disable,
    )
    return Uninstalled(result)


def show(settings: Settings, request: UnitRequest, environ: Mapping[str, str]) -> Shown:
    built = build(settings, request, environ)
    try:
        installed: bytes | None = built.path.read_bytes()
    except OSError:
        installed = None
    return Shown(built, installed is not None, installed == built.content.encode("utf-8"))
