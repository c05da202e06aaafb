"""Checks that a configured machine delivers what was ordered (inventory and manifest).

Each check is `{"name", "passed", "detail"}`; a machine whose checks do not all pass goes
`failed`. The torch performance validation adds its checks here (GPU roles issue).
"""

from typing import Any

from deepops_infra.accelerators import device_matches
from deepops_infra.images import Image


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": passed, "detail": detail}


def _version_satisfies(version: str, spec: str) -> bool:
    """A minimal PEP 440 check for the specifiers image files use (`>=3.8`, `==3.11`)."""
    if not spec:
        return True
    have = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    for clause in spec.split(","):
        clause = clause.strip()
        for op in (">=", "<=", "==", ">", "<"):
            if clause.startswith(op):
                want = tuple(int(p) for p in clause[len(op) :].strip().split("."))
                mine = have[: len(want)]
                ok = {">=": mine >= want, "<=": mine <= want, "==": mine == want, ">": mine > want, "<": mine < want}[
                    op
                ]
                if not ok:
                    return False
                break
    return True


def _dist(name: str) -> str:
    """A package name as PEP 503 compares them (jupyter_server is jupyter-server)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def check_manifest(image: Image, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    packages = {_dist(k): v for k, v in (manifest.get("packages") or {}).items()}
    python = manifest.get("python", "")
    if image.onprem and image.onprem.python:
        checks.append(
            _check(
                "python",
                _version_satisfies(python, image.onprem.python),
                f"found {python or 'none'}, image needs {image.onprem.python}",
            )
        )
    for name, want in image.versions.items():
        if name in ("python", "cuda"):
            continue  # python checked above; CUDA is checked by the GPU validation
        have = packages.get(_dist(name))
        checks.append(_check(f"package {name}", have == want, f"found {have or 'none'}, image pins {want}"))
    return checks


def check_gpus(model: str | None, count: int, host_gpus: list[dict[str, Any]], leased: list[int]) -> dict[str, Any]:
    """The leased GPUs exist on the host, and are of the ordered model."""
    by_index = {g["index"]: g for g in host_gpus}
    missing = [i for i in leased if i not in by_index]
    wrong = [
        i
        for i in leased
        if i in by_index and model and not device_matches(model, by_index[i]["name"], by_index[i].get("memory_mib"))
    ]
    passed = len(leased) == count and not missing and not wrong
    seen = ", ".join(f"{i}: {by_index[i]['name']}" for i in leased if i in by_index) or "none"
    detail = f"ordered {count} x {model or 'any'}, leased {leased}, found {seen}"
    if missing:
        detail += f"; missing {missing}"
    if wrong:
        detail += f"; not {model}: {wrong}"
    return _check("gpu inventory", passed, detail)


# -- the GPU validation (deepops_infra/gpuvalidate), run in the machine ------------------------


def has_torch(machine: Any) -> bool:
    """Whether the machine's environment has torch, as its manifest says."""
    return "torch" in ((machine.manifest or {}).get("packages") or {})


def gpu_validation(provider: Any, machine: Any, image: Image, quick: bool = False) -> dict[str, Any]:
    """Run the probe in the machine through the provider's shell; its checks and the full result."""
    from deepops_infra.gpuvalidate.runner import expectations, run_in_machine

    config: dict[str, Any] = {"expect": expectations(machine, image)}
    if quick:
        config["quick"] = True
    result = run_in_machine(provider, machine, config)
    return {
        "passed": bool(result.get("passed")),
        "checks": list(result.get("checks") or []),
        "gpu": {k: v for k, v in result.items() if k != "checks"},
    }


def failed_summary(validation: dict[str, Any]) -> str:
    return "; ".join(f"{c['name']}: {c['detail']}" for c in validation.get("checks", []) if not c.get("passed"))


def revalidate(
    settings: Any, ledger: Any, provider: Any, machine: Any, image: Image, progress: Any, quick: bool, keep: bool
) -> tuple[dict[str, Any], str | None]:
    """`deepops validate`: measure a live machine again, store the result, end the machine if it fails.

    Returns the result and, when it failed, what became of the machine. The machine goes back to
    `validating` for the run, then to `ready` when it passes or `failed` (torn down unless `keep`)
    when it does not."""
    from deepops_infra import states
    from deepops_infra.ledger import store
    from deepops_infra.lifecycle import Lifecycle

    with ledger.write() as session:
        row = store.find_machine(session, machine.id, for_update=True)
        if states.can_transition(row.status, states.VALIDATING):
            store.transition(session, row, states.VALIDATING, "validation requested")
        machine.status = row.status
    try:
        with progress.step(f"validating {machine.id}"):
            result = gpu_validation(provider, machine, image, quick=quick)
    except Exception as exc:  # could not measure: the machine is as it was, say why
        with ledger.write() as session:
            row = store.find_machine(session, machine.id, for_update=True)
            if row.status == states.VALIDATING:
                store.transition(session, row, states.READY, f"validation could not run: {exc}")
        raise
    result["at"] = store.now().isoformat().replace("+00:00", "Z")
    with ledger.write() as session:
        row = store.find_machine(session, machine.id)
        row.validation = result
        store.add_event(
            session,
            row,
            "validation",
            "GPU validation passed" if result["passed"] else "GPU validation failed: " + failed_summary(result),
            data={"passed": result["passed"], "figures": result["gpu"].get("figures")},
        )
        if result["passed"] and row.status == states.VALIDATING:
            store.transition(session, row, states.READY, "validation passed")
        machine.status = row.status
    machine.validation = result
    if result["passed"]:
        return result, None
    reason = "validation failed: " + failed_summary(result)
    Lifecycle(settings, ledger, provider, progress).fail(machine, reason, teardown=not keep)
    return result, f"{machine.id} {reason}" + ("; kept for debugging (--keep)" if keep else f"; {machine.status}")
