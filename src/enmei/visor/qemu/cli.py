"""``enmei image``: build, list and locate guest images (a Typer app; the main CLI mounts it).

    enmei image build [--name default] [--force]   build (or find up to date) with a progress bar
    enmei image list                               every built version, newest first
    enmei image path [NAME]                        the directory of the newest build of NAME

Exit status 0 on success; 1 with a one-line reason (and, for a missing package, the exact
``apt-get install`` command) on failure.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from enmei.visor.cage import standalone_cage
from enmei.visor.qemu import image as images
from enmei.visor.qemu.errors import ImageError

__all__ = ["app"]

app = typer.Typer(help="Guest images for qemu units, built from Debian packages.", no_args_is_help=True)

CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Instead of $XDG_CACHE_HOME/enmei.")]


@app.command()
def build(
    name: Annotated[str, typer.Option(help="Image name (units refer to it as image = NAME).")] = "default",
    force: Annotated[bool, typer.Option(help="Rebuild even if no input changed.")] = False,
    service_version: Annotated[str, typer.Option(help="Version string of the demo service.")] = "1.0",
    kernel_package: Annotated[str | None, typer.Option(help="A linux-image-* package to use.")] = None,
    cache_dir: CacheOpt = None,
    specimens: Annotated[bool, typer.Option(help="A test image (with the inert malware specimens and benign "
                                            "workloads of enmei bench malware).")] = False,
) -> None:
    """Build a guest image: a Debian kernel (unpacked, not installed), busybox, the demo service."""
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description:<48}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("image", total=100)

        def report(description: str, completed: float, total: float) -> None:
            progress.update(task, description=description, completed=completed, total=total)

        try:
            # The build's subprocesses (apt-get, dpkg, gzip) run in a helper cage of their own, beside a
            # supervisor's units on the same host (enmei.visor.cage).
            with standalone_cage(f"image-{os.getpid()}"):
                info = images.build(name, cache_dir=cache_dir, kernel_package=kernel_package,
                                    service_version=service_version, force=force, progress=report,
                                    specimens=specimens)
        except ImageError as exc:
            progress.stop()
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from exc
    typer.echo(f"{info.name}: {info.directory}")
    typer.echo(f"  kernel {info.kernel_package} {info.kernel_version}, busybox {info.busybox_version}, "
               f"service {info.service_version}, {info.size_bytes / 2**20:.1f} MiB")


@app.command("list")
def list_(cache_dir: CacheOpt = None) -> None:
    """Every built image version, newest first."""
    found = images.list_images(cache_dir)
    if not found:
        typer.echo(f"no images in {images.images_dir(cache_dir)}; run: enmei image build")
        return
    table = Table("name", "built", "kernel", "service", "hash", "directory")
    for info in found:
        table.add_row(info.name, time.strftime("%Y-%m-%d %H:%M", time.localtime(info.built_wall)),
                      info.kernel_version, info.service_version, info.inputs_hash[:12], info.directory)
    Console().print(table)


@app.command()
def path(name: Annotated[str, typer.Argument(help="Image name.")] = "default", cache_dir: CacheOpt = None) -> None:
    """The directory of the newest build of an image."""
    try:
        typer.echo(images.resolve(name, cache_dir=cache_dir).directory)
    except ImageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
