"""The progress bar of ``simulate_cohort`` (rich): one step per finished chunk."""

from __future__ import annotations


def start_progress(n: int, n_chunks: int, n_mine: int, n_done: int, rank: int, n_proc: int):
    """A started rich progress bar and its task: ``n_mine`` chunks, ``n_done`` reused."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    prog = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    prog.start()
    where = f" (process {rank} of {n_proc})" if n_proc > 1 else ""
    task = prog.add_task(
        f"{n} patients in {n_chunks} chunks{where}", total=n_mine, completed=n_done
    )
    return prog, task
