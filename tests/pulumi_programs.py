"""Run a stacks/<cloud> program under Pulumi's mocks and record what it declares (GCP and Azure tests)."""

import asyncio
import json
import runpy
from pathlib import Path
from typing import Any

import pulumi

STACKS = Path(__file__).resolve().parents[1] / "stacks"


class Recorder(pulumi.runtime.Mocks):
    def __init__(self, outputs: dict[str, dict[str, Any]]) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.outputs = outputs  # resource type -> outputs the cloud would add

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs) | self.outputs.get(args.typ, {})

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        return {}, []

    def of(self, typ: str) -> list[Any]:
        return [r for r in self.resources if r.typ == typ]


def fresh_event_loop() -> None:
    """Pulumi's mocks run on asyncio's current loop; a test that ran asyncio.run() earlier in this
    process (a server test, anything with anyio) leaves none, and get_event_loop() then raises:
    each program gets a loop of its own, whatever ran before it."""
    asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(
    cloud: str, config: dict[str, Any], provider_config: dict[str, str], outputs: dict[str, dict[str, Any]]
) -> tuple[Recorder, dict[str, Any]]:
    fresh_event_loop()
    mocks = Recorder(outputs)
    project = f"deepops-{cloud}"
    pulumi.runtime.set_mocks(mocks, project=project, stack=config["machineId"], preview=False)
    pulumi.runtime.set_all_config(
        {f"{project}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()} | provider_config
    )
    exported: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> Any:
        original = pulumi.export

        def capture(name: str, value: Any) -> None:
            exported[name] = value
            original(name, value)

        pulumi.export = capture
        try:
            runpy.run_path(str(STACKS / cloud / "__main__.py"), run_name="__main__")
        finally:
            pulumi.export = original
        return pulumi.Output.all(*exported.values())

    program()
    return mocks, exported
