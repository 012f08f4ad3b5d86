"""One driver for every stage of the recipe.

A stage is what the method does to one case (an image, a source with its target poses, a
LoRA to train): it names the case, lists the files the case produces, says which models it
needs and runs it with the :class:`~oneposetrans.session.Session`, returning what it did
(:class:`Done`). :func:`run_stage` owns everything around that, the same way for every stage and
every flow (the ``repose`` command, the ``run`` recipe, the stage commands, the demo): this
process's share of the cases under ``accelerate launch``, skipping the cases whose files exist
(a killed run resumes), the stage log, progress, and one line per failed case while the others
go on, with :class:`CaseFailures` at the end; it returns the stage's :class:`StageReport`.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Sequence, TypeVar

from oneposetrans import registry
from oneposetrans.errors import CaseFailures, EnvironmentProblem, MissingModelError, OnePoseTransError
from oneposetrans.progress import Progress, case_line
from oneposetrans.results import StageLog, is_done, stem

Case = TypeVar("Case")


@dataclass
class Done:
    """What one case did: the line shown with the progress, and for the flow's report the notes
    on what it lacked and the conditioning it used."""

    line: str | None = None
    notes: list[str] = field(default_factory=list)
    conditioning: str | None = None


@dataclass
class StageReport:
    """What a stage did in this process: its counts and each finished case's :class:`Done`."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    cases: list[Done] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """Every case's notes, each once, in order."""
        return list(dict.fromkeys(note for case in self.cases for note in case.notes))

    @property
    def conditioning(self) -> str | None:
        """What the cases conditioned on (the last case's words)."""
        return next((case.conditioning for case in reversed(self.cases) if case.conditioning), None)


class Stage(abc.ABC, Generic[Case]):
    """Base of the stages: subclasses define :meth:`outputs` and :meth:`run`.

    ``name`` is the stage's log (``logs/<name>.jsonl``) and its name among the registry's
    stages; ``unit`` counts its progress; ``shardable`` is False for a stage whose output is one
    shared file (the caption store), which the main process runs alone; ``overwrite`` redoes
    cases whose files exist.
    """

    name = "stage"
    unit = "image"
    shardable = True
    overwrite = False

    def case_name(self, case: Case) -> str:
        return stem(case)

    def models(self, session) -> list[str]:
        """The registry names of the models this stage's cases need (checked before a flow
        starts): by default, the required models the registry lists for the stage's name."""
        return registry.stage_models(self.name)

    @abc.abstractmethod
    def outputs(self, case: Case) -> list[Path]:
        """The files ``case`` writes; the case is finished when all of them exist (unless the
        stage says otherwise in :meth:`done`)."""

    def done(self, case: Case) -> bool:
        return all(is_done(path) for path in self.outputs(case))

    def skip(self, case: Case, log: StageLog) -> None:
        log.skip(self.case_name(case))

    def fail(self, case: Case, log: StageLog, reason: str) -> None:
        log.fail(self.case_name(case), reason)

    @abc.abstractmethod
    def run(self, case: Case, session, log: StageLog) -> Done | None:
        """Do one case and record it in ``log`` (``log.ok``); raise :class:`OnePoseTransError`
        when the case cannot be done. What it returns is collected in the stage's report; its
        line, if any, is printed with the count and the time left."""


def run_stage(
    stage: Stage,
    cases: Sequence,
    session,
    log: StageLog,
    echo: Callable[[str], None] = print,
    progress: bool = True,
    fail_fast: bool = False,
) -> StageReport:
    """Run ``stage`` over this process's share of ``cases``; returns what it did.

    A model is loaded only when a case is left to do (the session loads on first use). Missing
    models and machine problems stop the stage, since every case would fail the same way;
    ``fail_fast`` stops it at the first failed case.
    """
    if not stage.shardable and not session.is_main_process:
        session.wait_for_everyone()
        return StageReport()
    mine = session.shard(cases) if stage.shardable else list(cases)
    todo = []
    for case in mine:
        if not stage.overwrite and stage.done(case):
            stage.skip(case, log)
        else:
            todo.append(case)
    prefix = session.prefix
    started = time.perf_counter()
    finished: list[Done] = []
    with Progress(len(todo) if progress else 0, stage.name, stage.unit) as bar:
        for position, case in enumerate(todo, 1):
            try:
                did = stage.run(case, session, log) or Done()
            except (MissingModelError, EnvironmentProblem):
                raise
            except OnePoseTransError as error:
                stage.fail(case, log, str(error))
                echo(f"{prefix}failed: {error}")
                if fail_fast:
                    break
            else:
                finished.append(did)
                if did.line:
                    echo(prefix + case_line(position, len(todo), started, did.line))
            bar.update()
    echo(prefix + log.summary())
    if not stage.shardable:
        session.wait_for_everyone()
    if log.failed:
        raise CaseFailures(f"{log.summary()}; first: {log.failed[0][1]}", [reason for _, reason in log.failed])
    return StageReport(log.done, log.skipped, len(log.failed), finished)
