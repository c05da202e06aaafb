"""Image commands: ls, show, verify. What machines are configured with, and whether the pins hold."""

from typing import Annotated, Any

import typer

from deepops_infra.cli.common import info, print_json, print_table

app = typer.Typer(help="Pinned images: what machines are configured with.", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _summary(image: Any) -> dict[str, Any]:
    from deepops_infra.images import cloud_lock_pins, verify_onprem_lock

    gpu = image.gpu
    return {
        "name": image.name,
        "description": image.description,
        "gpu_required": image.gpu_required,
        "jupyter": image.jupyter,
        "versions": image.versions,
        "gpu": None
        if gpu is None
        else {
            "driver_branch": gpu.driver_branch,
            "driver_version": gpu.driver_version,
            "cuda": gpu.cuda,
            "container_toolkit": gpu.container_toolkit,
            "framework": gpu.framework,
        },
        "onprem_pin": image.onprem.pin if image.onprem else None,
        "onprem_lock_ok": verify_onprem_lock(image) is None,
        "bases": image.bases,
        "cloud_pins": cloud_lock_pins(image.name),
    }


@app.command("ls")
def ls(json_out: Json = False) -> None:
    """List the image definitions, their GPU stack and their pins."""
    from deepops_infra.images import load_images

    rows = [_summary(image) for image in load_images().values()]
    if json_out:
        print_json(rows)
        return
    print_table(
        ["NAME", "DRIVER", "CUDA", "FRAMEWORK", "ON-PREM PIN", "LOCK", "CLOUD PINS", "JUPYTER", "DESCRIPTION"],
        [
            [
                r["name"],
                r["gpu"]["driver_version"] if r["gpu"] else "-",
                r["gpu"]["cuda"] if r["gpu"] else "-",
                ", ".join(f"{k} {v}" for k, v in (r["gpu"] or {}).get("framework", {}).items()) or "-",
                (r["onprem_pin"] or "-")[:23] + ("…" if r["onprem_pin"] else ""),
                "ok" if r["onprem_lock_ok"] else "MISMATCH",
                ", ".join(f"{c}:{len(p)}" for c, p in sorted(r["cloud_pins"].items())) or "-",
                "yes" if r["jupyter"] else "-",
                r["description"],
            ]
            for r in rows
        ],
    )


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Image name (see `deepops images ls`).")], json_out: Json = False
) -> None:
    """Everything an image pins: versions, GPU stack, on-prem lock, bake bases and baked IDs per region."""
    from deepops_infra.images import get_image, verify_onprem_lock

    image = get_image(name)
    data = _summary(image) | {
        "source": str(image.source) if image.source else None,
        "onprem_lock": str(image.onprem.lock_path) if image.onprem else None,
        "onprem_python": image.onprem.python if image.onprem else None,
        "onprem_lock_problem": verify_onprem_lock(image) if image.onprem else None,
    }
    if json_out:
        print_json(data)
        return
    lines = [f"{image.name}: {image.description}", f"  definition           {data['source']}"]
    lines += [f"  version {k:<12} {v}" for k, v in image.versions.items()]
    if image.jupyter:
        lines.append("  jupyter              yes: `deepops up --jupyter` starts a server from this environment")
    if image.gpu:
        g = image.gpu
        lines += [
            f"  nvidia driver        {g.driver_version} (branch {g.driver_branch})",
            f"  cuda toolkit         {g.cuda}",
            f"  container toolkit    {g.container_toolkit}",
        ]
        lines += [f"  framework            {k}=={v}" for k, v in g.framework.items()]
    if image.onprem:
        status = data["onprem_lock_problem"] or "matches its pin"
        lines += [
            f"  on-prem pin          {image.onprem.pin}",
            f"  on-prem lock         {data['onprem_lock']} ({status}; python {image.onprem.python or 'any'})",
        ]
    for cloud, regions in sorted(image.bases.items()):
        lines += [f"  base {cloud:<8} {region:<14} {base}" for region, base in sorted(regions.items())]
    for cloud, regions in sorted(data["cloud_pins"].items()):
        lines += [f"  pin  {cloud:<8} {region:<14} {pin}" for region, pin in sorted(regions.items())]
    for line in lines:
        typer.echo(line)


def _row(result: Any) -> dict[str, Any]:
    """A cloud hook's result (a mapping or an object) as a row."""
    get = result.get if isinstance(result, dict) else lambda key, default=None: getattr(result, key, default)
    return {
        "image": get("image"),
        "region": get("region"),
        "pin": get("pin") or get("ami"),
        "ok": bool(get("ok")),
        "detail": get("detail", ""),
    }


@app.command("verify")
def verify(
    cloud: Annotated[
        str, typer.Option("--cloud", help="onprem: the hashed locks (offline); aws, gcp, azure: the baked IDs.")
    ] = "onprem",
    image: Annotated[str | None, typer.Option("--image", help="Only this image.")] = None,
    json_out: Json = False,
) -> None:
    """Check that every pin still holds; exit 1 when one does not.

    On-prem: each lock file's sha256 against the pin in its image file. Clouds: each baked ID
    through that cloud's provider (exists, available, not deprecated)."""
    from deepops_infra.errors import UserError
    from deepops_infra.images import (
        CLOUD_PIN_HOOK,
        check_cloud_locks,
        cloud_pin_verifier,
        get_image,
        load_images,
        verify_onprem_lock,
    )

    images = [get_image(image)] if image else list(load_images().values())
    check_cloud_locks()  # offline first: a pin contradicting its image's driver/CUDA is refused (exit 2)
    if cloud == "onprem":
        rows = []
        for img in images:
            if img.onprem is None:
                continue
            problem = verify_onprem_lock(img)
            rows.append(
                {
                    "image": img.name,
                    "region": None,
                    "pin": img.onprem.pin,
                    "ok": problem is None,
                    "detail": problem or f"{img.onprem.lock_path.name} matches",
                }
            )
    else:
        hook = cloud_pin_verifier(cloud)
        if hook is None:
            raise UserError(
                f"--cloud {cloud}: no pin check for {cloud} yet "
                f"(deepops_infra/providers/{cloud}/images.py has no {CLOUD_PIN_HOOK}); use onprem, aws, gcp or azure"
            )
        from deepops_infra.cli.common import settings

        rows = [_row(r) for r in hook(settings(), [img.name for img in images])]
    if json_out:
        print_json(rows)
    elif not rows:
        info(f"no {cloud} pins to check")
    else:
        print_table(
            ["IMAGE", "REGION", "PIN", "OK", "DETAIL"],
            [[r["image"], r["region"] or "-", r["pin"], "yes" if r["ok"] else "NO", r["detail"]] for r in rows],
        )
    if not all(r["ok"] for r in rows):
        raise typer.Exit(1)
