"""Tasks by name: what differs between kinds of model (`runners.tasks.base` says what)."""

from runners.errors import RepositoryError
from runners.tasks.base import AnswerOptions, Prepared, Task
from runners.tasks.classification import CLASSIFICATION
from runners.tasks.detection import DETECTION

# A new kind of model: one module beside classification.py with a Task subclass, added here.
TASKS: dict[str, Task] = {task.name: task for task in (CLASSIFICATION, DETECTION)}


# The HTTP routes of every task: path -> (task, endpoint label, many images).
ROUTES: dict[str, tuple[Task, str, bool]] = {
    path: (task, endpoint, many)
    for task in TASKS.values()
    for path, endpoint, many in (
        (task.route, task.endpoint, False),
        (f"{task.route}/batch", f"{task.endpoint}_batch", True),
    )
}


def get_task(name: str) -> Task:
    """The registered task; an unknown name is a RepositoryError that lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise RepositoryError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}") from None


__all__ = ["ROUTES", "TASKS", "AnswerOptions", "Prepared", "Task", "get_task"]
