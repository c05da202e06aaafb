"""`deepops gpus` (offerings with prices) and `deepops catalog refresh` (prices from the clouds)."""

from typing import Annotated

import typer

from deepops_infra.cli.common import info, print_json, print_table, settings

app = typer.Typer(help="The GPU catalog: offerings and prices per cloud and region.", no_args_is_help=True)


@app.command("refresh")
def refresh(
    cloud: Annotated[str, typer.Option("--cloud", help="Cloud whose part to rebuild (aws, gcp, azure).")] = "aws",
    region: Annotated[list[str] | None, typer.Option("--region", help="Only these regions (repeatable).")] = None,
) -> None:
    """Rebuild a cloud's offerings from its pricing APIs into $DEEPOPS_HOME/catalog/<cloud>.csv."""
    from deepops_infra.errors import OperationError, UserError

    if cloud in ("gcp", "azure"):
        from deepops_infra.catalog.refresh import refresh_cloud

        info(refresh_cloud(settings(), cloud, list(region or [])))
        return
    if cloud != "aws":
        raise UserError(f"--cloud {cloud}: refresh is available for aws, gcp and azure")
    from deepops_infra.catalog import refreshed_path, write_rows
    from deepops_infra.catalog.aws import refresh as refresh_aws
    from deepops_infra.providers.aws.clients import Clients
    from deepops_infra.providers.aws.settings import aws_settings

    s = settings()
    aws = aws_settings(s)
    clients = Clients(aws)
    ok, detail = clients.has_credentials()
    if not ok:
        raise UserError(detail)
    regions = list(region or aws.regions or ["us-east-1", "us-west-2", "eu-west-1"])
    try:
        offers = refresh_aws(clients, regions)
    except Exception as exc:
        if type(exc).__module__.startswith("botocore"):
            raise OperationError(f"refreshing AWS prices: {exc}") from None
        raise
    if not offers:
        raise OperationError(f"AWS answered no GPU offers in {', '.join(regions)}; catalog left as it was")
    path = refreshed_path(s.ensure_home(), "aws")
    path.parent.mkdir(parents=True, exist_ok=True)
    from datetime import UTC, datetime

    header = (
        f"AWS offerings refreshed {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} from the Price List API, "
        f"describe_spot_price_history and describe_instance_types ({', '.join(regions)})"
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(write_rows(offers, header))
    tmp.replace(path)
    info(f"{len(offers)} AWS offerings in {len(regions)} regions written to {path}")


@app.command("check")
def check(
    factor: Annotated[
        str, typer.Option("--factor", help="Most a shape's $/GPU-hour may differ across one cloud's regions.")
    ] = "1.5",
    file: Annotated[
        str | None, typer.Option("--file", help="Check this catalog file instead of the catalog in use.")
    ] = None,
    accepted: Annotated[
        str | None, typer.Option("--accepted", help="Accepted exceptions file (default: the shipped one).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Flag prices and shapes that cannot be right; exit 1 when a finding is not an accepted exception.

    Checks: a shape's on-demand $/GPU-hour spread across one cloud's regions above --factor, spot
    above on-demand, an offer without GPU count, vCPUs or memory. Accepted exceptions name their source."""
    from decimal import Decimal, InvalidOperation
    from pathlib import Path

    from deepops_infra.catalog import load_catalog, read_catalog
    from deepops_infra.catalog.check import ACCEPTED, check, read_accepted
    from deepops_infra.errors import UserError

    try:
        limit = Decimal(factor)
    except InvalidOperation:
        limit = Decimal("NaN")
    if not limit.is_finite() or limit < 1:
        raise UserError(f"--factor {factor!r}: give a number of 1 or more, e.g. --factor 1.5")
    for option, path in (("--file", file), ("--accepted", accepted)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{option} {path}: no such file")
    offers = read_catalog(Path(file)) if file else load_catalog(settings().home)
    try:
        exceptions = read_accepted(Path(accepted) if accepted else ACCEPTED)
    except ValueError as exc:
        raise UserError(f"{exc}; fix the accepted exceptions file") from None
    findings = check(offers, limit, exceptions)
    failed = [f for f in findings if not f.accepted]
    if json_out:
        print_json([f.to_json() for f in findings])
    elif findings:
        print_table(
            ["CHECK", "CLOUD", "REGION", "INSTANCE TYPE", "GPUS", "DETAIL", "ACCEPTED"],
            [
                [
                    f.check,
                    f.cloud,
                    f.region or "-",
                    f.instance_type,
                    str(f.accelerator_count),
                    f.detail,
                    f.accepted or "NO",
                ]
                for f in findings
            ],
        )
    info(f"{len(offers)} offerings checked: {len(failed)} to fix, {len(findings) - len(failed)} accepted exception(s)")
    if failed:
        raise typer.Exit(1)


def gpus(
    cloud: Annotated[str | None, typer.Option("--cloud", help="Only this cloud (aws, gcp, azure).")] = None,
    region: Annotated[str | None, typer.Option("--region", help="Only this region.")] = None,
    accelerator: Annotated[
        str | None, typer.Option("--accelerator", help="Only this GPU model (A100 matches every A100).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """GPU offerings with their on-demand and spot prices per hour, cheapest first."""
    from deepops_infra.accelerators import ACCELERATORS, canonical_model, model_allows
    from deepops_infra.catalog import load_catalog
    from deepops_infra.cli.teammode import team_client
    from deepops_infra.errors import UserError
    from deepops_infra.money import rate

    server = team_client()  # team mode: the server's catalog
    offers = server.offers() if server is not None else load_catalog(settings().home)
    if cloud is not None:
        if cloud not in {o.cloud for o in offers}:
            raise UserError(
                f"--cloud {cloud}: no offerings; clouds in the catalog: {', '.join(sorted({o.cloud for o in offers}))}"
            )
        offers = [o for o in offers if o.cloud == cloud]
    if region is not None:
        regions = sorted({o.region for o in offers})
        offers = [o for o in offers if o.region == region]
        if not offers:
            raise UserError(f"--region {region}: no offerings there; regions: {', '.join(regions)}")
    if accelerator is not None:
        model = canonical_model(accelerator)
        if model is None:
            raise UserError(f"--accelerator: unknown GPU model {accelerator!r}; models: {', '.join(ACCELERATORS)}")
        offers = [o for o in offers if model_allows(model, o.accelerator)]
    offers.sort(key=lambda o: (o.price_per_hour is None, o.price_per_hour or 0, o.cloud, o.region, o.instance_type))
    if json_out:
        print_json([o.to_json() for o in offers])
        return
    if not offers:
        info("no offerings match")
        return
    print_table(
        ["CLOUD", "REGION", "INSTANCE TYPE", "GPUS", "VCPUS", "MEMORY GIB", "PRICE", "SPOT"],
        [
            [
                o.cloud,
                o.region,
                o.instance_type,
                f"{o.accelerator_count} x {o.accelerator}",
                str(o.vcpus),
                str(o.memory_gib),
                rate(o.price_per_hour),
                rate(o.spot_price_per_hour),
            ]
            for o in offers
        ],
    )


def images_verify(
    cloud: Annotated[str, typer.Option("--cloud", help="Cloud whose pins to check (aws).")] = "aws",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check every pinned AMI exists, is available and not deprecated (describe_images); exit 1 if not."""
    from deepops_infra.errors import UserError

    if cloud != "aws":
        raise UserError(f"--cloud {cloud}: verify is available for aws")
    from deepops_infra.providers.aws.clients import Clients
    from deepops_infra.providers.aws.images import verify
    from deepops_infra.providers.aws.settings import aws_settings

    clients = Clients(aws_settings(settings()))
    ok, detail = clients.has_credentials()
    if not ok:
        raise UserError(detail)
    results = verify(clients.ec2)
    if json_out:
        print_json([r.__dict__ for r in results])
    else:
        print_table(
            ["IMAGE", "REGION", "AMI", "OK", "DETAIL"],
            [[r.image, r.region, r.ami, "yes" if r.ok else "NO", r.detail] for r in results],
        )
    if not all(r.ok for r in results):
        raise typer.Exit(1)
