"""The machine-readable report of a participant-level run (JSON, one per run).

It lists every packet that could not be assigned, every session with its outcome, and
every failed or excluded file and series with its reason, plus wall time per stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bidsport import __version__
from bidsport.records import Problem

if TYPE_CHECKING:  # importing the participant level loads pydicom
    from bidsport.participant import ParticipantRun


def _problem(p: Problem) -> dict[str, Any]:
    return {"where": p.where, "stage": p.stage, "reason": p.reason, "fatal": p.fatal}


def build_run_report(
    run: ParticipantRun,
    *,
    argv: Sequence[str],
    exit_code: int,
    started: str,
    finished: str,
    packets: Sequence[Sequence[str]] = (),
) -> dict[str, Any]:
    """The report as a JSON-ready dict (pure).

    ``packets`` gives the packet names of each session, in the order of ``run.results``
    (a session may be made of several packets); without it the key is ``null``.
    """
    if packets and len(packets) != len(run.results):
        raise ValueError(f"{len(packets)} packet lists for {len(run.results)} sessions")
    sessions = []
    for i, r in enumerate(run.results):
        status = "skipped" if r.skipped else "failed" if r.error else "done"
        sessions.append(
            {
                "participant_id": f"sub-{r.subject}",
                "session_id": f"ses-{r.session}" if r.session else None,
                "packets": list(packets[i]) if packets else None,
                "status": status,
                "error": r.error,
                "imported": r.imported,
                "organized": r.organized,
                "converted": r.converted,
                "images": [img.relpath for img in r.images],
                "problems": [_problem(p) for p in r.problems],
                "seconds": {stage: round(sec, 3) for stage, sec in r.timings},
            }
        )
    done = sum(1 for r in run.results if not r.skipped and not r.error)
    skipped = sum(1 for r in run.results if r.skipped)
    failed = sum(1 for r in run.results if r.error)
    return {
        "bidsport_version": __version__,
        "command": list(argv),
        "started": started,
        "finished": finished,
        "exit_code": exit_code,
        "packets_in_inbox": run.n_packets,
        "packets_not_imported": [_problem(p) for p in run.problems],
        "sessions": sessions,
        "summary": {
            "sessions": len(run.results),
            "done": done,
            "skipped": skipped,
            "failed": failed,
            "excluded_or_failed_items": sum(len(r.problems) for r in run.results),
        },
    }
