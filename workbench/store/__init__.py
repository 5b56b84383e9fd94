"""Saved sessions: save, load and replay (persist), the on-disk format and its checks
(session_format), the K/V snapshot (kv_snapshot) and the replay report (replay_report)."""

from workbench.store.persist import load, replay, save

__all__ = ["load", "replay", "save"]
