"""Operations: backups with point-in-time recovery, the restore drill, QuestDB snapshots,
compression of old partitions and export.

Each job is an async function taking the settings and returning a small result dataclass
(``duration_s``, ``summary()``, ``as_dict()``), so a scheduler can run, log and report any of
them alike; a job that fails raises a ``tradestore.errors`` type.
"""

from tradestore.operations.backup import (
    BackupResult,
    BackupSet,
    RestoreResult,
    VerifyResult,
    discard_restored_cluster,
    list_backups,
    replace_live_cluster,
    restore_cluster,
    run_backup,
    verify_backups,
)
from tradestore.operations.compression import CompressionResult, compress_partitions
from tradestore.operations.drill import DrillResult, restore_drill
from tradestore.operations.export import ExportRequest, ExportResult, export_table
from tradestore.operations.result import JobResult
from tradestore.operations.snapshot import SnapshotResult, snapshot_questdb, start_from_snapshot

__all__ = [
    "BackupResult",
    "BackupSet",
    "CompressionResult",
    "DrillResult",
    "ExportRequest",
    "ExportResult",
    "JobResult",
    "RestoreResult",
    "SnapshotResult",
    "VerifyResult",
    "compress_partitions",
    "discard_restored_cluster",
    "export_table",
    "list_backups",
    "replace_live_cluster",
    "restore_cluster",
    "restore_drill",
    "run_backup",
    "snapshot_questdb",
    "start_from_snapshot",
    "verify_backups",
]
