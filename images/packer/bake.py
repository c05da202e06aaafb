"""Bake helper: the Packer variables of an image definition, and the baked IDs into the lock.

    python images/packer/bake.py vars IMAGE --cloud aws --region us-east-1 [--out build/vars.json]
    python images/packer/bake.py record packer-manifest.json [--images-dir images]

`vars` writes everything gpu-image.pkr.hcl needs (one file, used as -var-file): the base for that
cloud and region from the image's `bases:`, its lock hash, and the roles' variables (a second
file next to it, passed to Ansible as @file). `record` reads Packer's manifest post-processor
output and writes each baked ID into images/<cloud>.lock.yaml under `images.NAME.regions.REGION`,
with the driver and CUDA the bake installed (`driver:`, `cuda:` from the image's `gpu:`; an
`unavailable:` note goes), keeping every other entry and field (and the leading comment) as they were.
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from deepops_infra.images import load_images  # noqa: E402

ID_FORMATS = {
    "aws": re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$"),
    "gcp": re.compile(r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/global/images/[a-z][-a-z0-9]{0,62}$"),
    "azure": re.compile(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/images/[^/]+$", re.I),
}
BUILDERS = {"amazon-ebs": "aws", "googlecompute": "gcp", "azure-arm": "azure"}


class BakeError(Exception):
    pass


def packer_vars(image_name: str, cloud: str, region: str, out: Path, images_dir: Path | None = None) -> dict[str, Any]:
    images = load_images(images_dir) if images_dir else load_images()
    if image_name not in images:
        raise BakeError(f"unknown image {image_name!r}; available: {', '.join(sorted(images))}")
    image = images[image_name]
    if image.gpu is None or image.onprem is None:
        raise BakeError(f"{image_name}: baking needs `gpu:` (driver, CUDA, toolkit) and the `onprem:` lock")
    base = image.bases.get(cloud, {}).get(region)
    if not base:
        have = ", ".join(f"{c}/{r}" for c, rs in sorted(image.bases.items()) for r in sorted(rs)) or "none"
        raise BakeError(f"{image_name} has no base for {cloud} {region} (bases: {have})")
    role_vars = {
        **image.gpu.role_vars(),
        "framework_lock_src": str(image.onprem.lock_path),
        "framework_lock_sha256": image.onprem.sha256,
        "framework_python": "python" + image.versions["python"] if image.versions.get("python") else "python3",
    }
    roles_file = out.with_name(out.stem + ".roles.json")
    roles_file.write_text(json.dumps(role_vars, indent=2, sort_keys=True) + "\n")
    variables = {
        "image": image_name,
        "cloud": cloud,
        "region": region,
        "base": base,
        "lock_sha256": image.onprem.sha256,
        "role_vars_file": str(roles_file.resolve()),
        "version": time.strftime("%Y%m%d%H%M%S", time.gmtime()),
    }
    out.write_text(json.dumps(variables, indent=2, sort_keys=True) + "\n")
    return variables


def baked_ids(manifest: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(cloud, image, region, id) for each build of the manifest's last run."""
    last = manifest.get("last_run_uuid")
    found = []
    for build in manifest.get("builds") or []:
        if last and build.get("packer_run_uuid") != last:
            continue
        data = build.get("custom_data") or {}
        cloud = BUILDERS.get(str(build.get("builder_type")))
        if cloud is None:
            raise BakeError(f"build {build.get('name')}: builder {build.get('builder_type')} is not one bake records")
        image, artifact = data.get("image"), str(build.get("artifact_id") or "")
        if not image or not artifact:
            raise BakeError(f"build {build.get('name')}: the manifest has no image name or artifact ID")
        if cloud == "aws":  # "us-east-1:ami-0abc,us-west-2:ami-0def" (copies to several regions)
            pairs = [part.split(":", 1) for part in artifact.split(",")]
        elif cloud == "gcp":  # the image name; images are global, in the builder's project
            pairs = [[data.get("region") or "global", f"projects/{data.get('project')}/global/images/{artifact}"]]
        else:  # the managed image's resource ID, in the build's location
            pairs = [[data.get("region"), artifact]]
        for region, ident in pairs:
            if not region or not ID_FORMATS[cloud].match(ident):
                raise BakeError(f"build {build.get('name')}: {ident!r} in {region!r} is not a {cloud} image ID")
            found.append((cloud, str(image), str(region), ident))
    if not found:
        raise BakeError("the manifest records no build of its last run")
    return found


def record(manifest_path: Path, images_dir: Path) -> list[tuple[str, str, str, str]]:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise BakeError(f"{manifest_path}: not a Packer manifest ({exc})") from None
    found = baked_ids(manifest)
    for cloud in sorted({f[0] for f in found}):
        path = images_dir / f"{cloud}.lock.yaml"
        text = path.read_text() if path.exists() else ""
        header = _leading_comments(text) or f"# Baked {cloud} image IDs per image and region (images/packer/bake.py).\n"
        data = yaml.safe_load(text) if text else None
        data = data if isinstance(data, dict) else {}
        images = data.setdefault("images", {})
        definitions = load_images(images_dir)
        for _, image, region, ident in (f for f in found if f[0] == cloud):
            entry = images.setdefault(image, {})
            entry.pop("unavailable", None)  # a matching pin now exists
            gpu = definitions[image].gpu if image in definitions else None
            if gpu is not None:  # baked with the image's own roles: its driver and CUDA
                entry.update(driver=gpu.driver_version, cuda=gpu.cuda)
            if not isinstance(entry.get("regions"), dict):
                entry["regions"] = {}
            entry["regions"][region] = ident
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
        tmp.replace(path)
    return found


def _leading_comments(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line + "\n")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("vars", help="write the Packer variables of an image")
    v.add_argument("image")
    v.add_argument("--cloud", required=True, choices=sorted(ID_FORMATS))
    v.add_argument("--region", required=True)
    v.add_argument("--out", type=Path, default=None)
    v.add_argument("--images-dir", type=Path, default=None)
    r = sub.add_parser("record", help="write the baked IDs of a Packer manifest into images/<cloud>.lock.yaml")
    r.add_argument("manifest", type=Path)
    r.add_argument("--images-dir", type=Path, default=ROOT / "images")
    args = parser.parse_args(argv)
    try:
        if args.command == "vars":
            out = args.out or Path("build") / f"{args.image}-{args.cloud}-{args.region}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            packer_vars(args.image, args.cloud, args.region, out, args.images_dir)
            print(out)
        else:
            for cloud, image, region, ident in record(args.manifest, args.images_dir):
                print(f"{cloud} {image} {region} {ident}")
    except BakeError as exc:
        sys.stderr.write(f"bake: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
