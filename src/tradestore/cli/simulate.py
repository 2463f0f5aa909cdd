"""``tradestore simulate``: a trading day through the three stores, watched live, verified."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from tradestore.cli.context import settings_of
from tradestore.cli.output import JsonOption, console, print_json, run_or_exit
from tradestore.errors import VerificationError
from tradestore.settings import Settings
from tradestore.simulation.dashboard import LiveView
from tradestore.simulation.plan import Layout
from tradestore.simulation.profiles import PROFILES, Profile, profile
from tradestore.simulation.report import SimulationReport, format_ms, render
from tradestore.simulation.runner import MaxReport, Simulation, find_max


@contextmanager
def _watched(simulation: Simulation, live: bool, title: str) -> Iterator[None]:
    """A live dashboard for the run when a person watches a terminal."""
    if not live:
        yield
        return
    view = LiveView(simulation.profile.targets(), simulation.duration_s, title)
    simulation.view = view
    with Live(view, console=console, auto_refresh=False, transient=True) as screen:
        simulation.redraw = screen.refresh
        yield


def _max_table(report: MaxReport) -> Table:
    table = Table(
        title=f"sustainable maximum with {report.workers} worker process(es) ({report.layout})"
        f" (p99 target {report.p99_target_ms:g} ms, {report.step_s:g} s per step)",
        title_justify="left",
    )
    table.add_column("rate scale", justify="right")
    for name in report.maximum:
        table.add_column(f"{name}/s (p99)", justify="right")
    table.add_column("verified")
    for step in report.steps:
        cells = [
            f"[{'green' if step.kept[s.name] else 'red'}]{s.achieved_per_s:,.0f}[/]"
            f" ({format_ms(s.p99_ms)})"
            for s in step.streams
        ]
        table.add_row(f"{step.rate_scale:g}x", *cells, "yes" if step.verified else "[red]no[/]")
    table.add_row(
        "[bold]maximum[/]", *(f"[bold]{rate:,.0f}[/]" for rate in report.maximum.values()), ""
    )
    return table


def simulate(
    ctx: typer.Context,
    *,
    profile_name: Annotated[
        str, typer.Option("--profile", help=f"Load profile: {', '.join(PROFILES)}.")
    ] = "seed",
    duration: Annotated[
        float, typer.Option(min=1, help="Seconds of load (per step with --find-max).")
    ] = 60.0,
    rate_scale: Annotated[
        float, typer.Option(min=0.001, help="Multiply every stream's target rate.")
    ] = 1.0,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes. Two (the feed's and the traders') keep the feed off the"
            " traders' event loop (figures: BENCHMARKS.md).",
        ),
    ] = 2,
    layout: Annotated[
        Layout,
        typer.Option(
            help="roles: the price feed in a worker of its own, the traders in the others, as"
            " deployed (each trader worker is one more writer of every QuestDB table, which costs"
            " QuestDB dearly); mixed: every worker plays a share of every actor."
        ),
    ] = Layout.ROLES,
    seed: Annotated[int, typer.Option(help="Seed of the market and of every actor.")] = 42,
    tokens: Annotated[int | None, typer.Option(help="Tokens (default: the profile's).")] = None,
    traders: Annotated[int | None, typer.Option(help="Traders (default: the profile's).")] = None,
    max_mode: Annotated[
        bool,
        typer.Option(
            "--find-max", help="Ramp the rate scale until the p99 target breaks, per stream."
        ),
    ] = False,
    p99_ms: Annotated[
        float, typer.Option(min=0.1, help="--find-max: p99 target of every stream, in ms.")
    ] = 250.0,
    node_id: Annotated[
        str | None,
        typer.Option(
            help="Play this platform node (default TRADESTORE_NODE_ID, else the host name);"
            " one process per node id at a time (exit 75 if it is taken)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Play a trading day through QuestDB, PostgreSQL and Redis at a profile's load, watch it
    live, then verify nothing was lost or duplicated (exit 4 if a check fails)."""
    settings = settings_of(ctx)
    live = console.is_terminal and not as_json

    def node() -> Settings:
        """The settings as the node asked for (a bad id is a ConfigError, exit 78)."""
        return settings if node_id is None else settings.for_node(node_id)

    def chosen() -> Profile:
        return profile(profile_name).with_actors(tokens=tokens, traders=traders)

    title = f"tradestore simulate --profile {profile_name}"
    if max_mode:

        async def ramp() -> MaxReport:
            return await find_max(
                node(),
                chosen(),
                workers=workers,
                step_s=duration,
                p99_ms=p99_ms,
                seed=seed,
                layout=layout,
                watch=lambda simulation: _watched(simulation, live, f"{title} --find-max"),
            )

        ramped = run_or_exit(ramp, as_json=as_json)
        if as_json:
            print_json(ramped.as_dict())
        else:
            console.print(_max_table(ramped))
        return

    async def play() -> SimulationReport:
        simulation = Simulation(
            node(),
            chosen().scaled(rate_scale),
            duration_s=duration,
            workers=workers,
            seed=seed,
            layout=layout,
        )
        with _watched(simulation, live, title):
            return await simulation.run()

    report = run_or_exit(play, as_json=as_json)
    if as_json:
        print_json(report.as_dict())
    else:
        console.print(render(report))
    try:
        report.check()
    except VerificationError as failed:
        raise typer.Exit(failed.exit_code) from None
