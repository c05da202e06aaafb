"""`deepops validate ID`: prove a machine delivers (GPU inventory, matmul, bandwidths, all-reduce)."""

from typing import Annotated

import typer

from deepops_infra.cli.common import info, open_ledger, print_json, settings


def validate(
    machine_ref: Annotated[str, typer.Argument(metavar="ID", help="Machine ID or name.")],
    keep: Annotated[bool, typer.Option("--keep", help="Leave a machine that fails up for debugging.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes: checks the path, not the performance.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the GPU validation in a machine and store its result (shown by `deepops show`).

    Checks the GPUs against the order (count, model, memory) and measures bf16/fp16/tf32 matmul,
    memory and host-device bandwidth and, with several GPUs, the NCCL all-reduce, each against the
    model's datasheet figure and a threshold. A machine that fails is released (failed, if it was
    not ready yet) unless --keep. Exit 0 when every check passed, 1 when one failed."""
    from deepops_infra.errors import OperationError, UserError
    from deepops_infra.images import get_image
    from deepops_infra.ledger import store
    from deepops_infra.progress import make_progress
    from deepops_infra.providers import get_provider
    from deepops_infra.validation import has_torch, revalidate

    s = settings()
    ledger = open_ledger(s, create=False)
    with ledger.read() as session:
        machine = store.find_machine(session, machine_ref)
    if machine.ended_at is not None:
        raise UserError(f"{machine.id} is {machine.status}; only a running machine can be validated")
    if machine.gpu_count == 0 and not has_torch(machine):
        raise UserError(
            f"{machine.id} has no GPUs and its image {machine.image} has no torch: nothing to validate "
            "(a GPU machine, or an image with torch, can be)"
        )
    image = get_image(machine.image)
    provider = get_provider(machine.cloud, s, ledger)
    result, failure = revalidate(s, ledger, provider, machine, image, make_progress(enabled=not json_out), quick, keep)
    if json_out:
        print_json(result)
    else:
        for check in result["checks"]:
            info(f"  {'✓' if check['passed'] else '✗'} {check['name']}: {check['detail']}")
    if failure:
        raise OperationError(failure)
    if not json_out:
        info(f"{machine.id} passed the GPU validation ({result['gpu'].get('seconds')}s)")
