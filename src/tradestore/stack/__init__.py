"""A private stack of real servers (PostgreSQL, Redis, QuestDB) under the data directory."""

from tradestore.stack.base import ServerStatus
from tradestore.stack.manager import LocalStack

__all__ = ["LocalStack", "ServerStatus"]
