"""One run's plan: the market, the traders and the nodes, and which worker process plays whom.

The plan is made once by the parent process from the profile and the seed, and handed to every
worker whole (it pickles), so all processes agree on ids, mints and shares. The seed fixes the
market and every actor's decisions; the run tag, fresh each run, keeps its rows apart from those
of earlier runs on the same stores, and of runs of other platform nodes (``Settings.node_id``)
playing at the same time: their traders and rules are theirs, their UI reads in its own group.
The RPC nodes are the same for every run, as a platform's endpoints are: each platform node
reports and reads its own view of their health.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import TypeVar
from uuid import UUID

from tradestore.models import TraderConfig, TradingMode
from tradestore.settings import Settings
from tradestore.simulation.ids import RUN_TAG_BITS
from tradestore.simulation.market import SimToken, make_tokens
from tradestore.simulation.profiles import Profile

WATCHLIST = 8
T = TypeVar("T")


class Layout(StrEnum):
    """How the actors are spread over the worker processes."""

    MIXED = "mixed"
    """Every process plays a share of every actor: the feed, the traders and the nodes."""
    ROLES = "roles"
    """As the platform is deployed: the price feed and the node monitor in a process of their
    own (worker 0), the traders and their rule executors in the others. With one worker, the
    same as ``mixed``."""


@dataclass(frozen=True, slots=True)
class TraderSpec:
    index: int
    config: TraderConfig
    watchlist: tuple[int, ...]
    """Indexes of the tokens this trader trades."""


@dataclass(frozen=True, slots=True)
class RunPlan:
    settings: Settings
    profile: Profile
    seed: int
    duration_s: float
    workers: int
    layout: Layout
    run_tag: int
    tokens: tuple[SimToken, ...]
    traders: tuple[TraderSpec, ...]
    nodes: tuple[str, ...]

    @property
    def run_id(self) -> str:
        return f"{self.run_tag:015x}"

    @property
    def node_id(self) -> str:
        """The platform node this run plays (it owns the run's traders and their rules)."""
        return self.settings.node_id

    @property
    def tui_group(self) -> str:
        """The UI's consumer group: one per platform node, so that each node's UI reads every
        entry (in one shared group, each entry would go to only one of the nodes)."""
        return f"tui-{self.node_id}"

    def claimer(self, worker: int) -> str:
        """Who a worker's rule claims name (``order_rules.claimed_by``)."""
        return f"{self.node_id}:simulation-{worker}"

    @property
    def pubsub_channel(self) -> str:
        return f"ui:sim:{self.run_id}:prices"  # ui:* is the application user's channel space

    @property
    def feed_workers(self) -> tuple[int, ...]:
        """The workers that run a price feed (and the node monitor)."""
        if self.layout is Layout.ROLES:
            return (0,)
        return tuple(range(self.workers))

    @property
    def trader_workers(self) -> tuple[int, ...]:
        """The workers that run traders (and a rule executor for their rules)."""
        if self.layout is Layout.ROLES and self.workers > 1:
            return tuple(range(1, self.workers))
        return tuple(range(self.workers))

    def tokens_of(self, worker: int) -> list[SimToken]:
        """The tokens whose prices this worker's feed writes."""
        return _dealt(self.tokens, self.feed_workers, worker)

    def traders_of(self, worker: int) -> list[TraderSpec]:
        return _dealt(self.traders, self.trader_workers, worker)

    def nodes_of(self, worker: int) -> list[str]:
        """The RPC nodes whose health this worker reports."""
        return _dealt(self.nodes, self.feed_workers, worker)

    def feed_share(self, rate: float) -> float:
        """One feed worker's part of a rate spread evenly over the feed workers."""
        return rate / len(self.feed_workers)


def _dealt(items: Sequence[T], workers: Sequence[int], worker: int) -> list[T]:
    """The items dealt round-robin to ``worker`` among ``workers`` (none if it is not one)."""
    if worker not in workers:
        return []
    return list(items[workers.index(worker) :: len(workers)])


def make_plan(
    settings: Settings,
    profile: Profile,
    *,
    seed: int,
    duration_s: float,
    workers: int,
    layout: Layout = Layout.ROLES,
) -> RunPlan:
    rng = random.Random(seed)
    run_tag = secrets.randbits(RUN_TAG_BITS)
    tokens = tuple(make_tokens(seed, profile.tokens))
    live = round(profile.traders * profile.live_fraction)
    traders = []
    for index in range(profile.traders):
        mode = TradingMode.LIVE if index < live else TradingMode.PAPER
        config = TraderConfig(
            id=UUID(int=rng.getrandbits(128) ^ run_tag, version=4),
            name=f"sim-{run_tag:015x}-{mode.value}-{index:03d}",
            mode=mode,
            max_position_size=Decimal(rng.choice((1_000, 5_000, 25_000))),
            max_daily_loss=Decimal(rng.choice((500, 2_000, 10_000))),
            max_slippage_bps=rng.choice((50, 100, 300)),
            mev_protection_enabled=rng.random() < 0.7,
        )
        watchlist = tuple(rng.sample(range(len(tokens)), min(WATCHLIST, len(tokens))))
        traders.append(TraderSpec(index, config, watchlist))
    nodes = tuple(f"https://rpc-{n}.sim.invalid/" for n in range(profile.nodes))
    return RunPlan(
        settings=settings,
        profile=profile,
        seed=seed,
        duration_s=duration_s,
        workers=workers,
        layout=layout,
        run_tag=run_tag,
        tokens=tokens,
        traders=tuple(traders),
        nodes=nodes,
    )
