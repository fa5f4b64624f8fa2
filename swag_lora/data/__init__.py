"""Data: the task registry, loaders (hub, offline folders, original files, generated demo) and encoding."""
from swag_lora.data.loading import DataSource, load_splits, offline_dirs
from swag_lora.data.tasks import TASK_NAMES, TASKS, Task, check_subtask, get_task

__all__ = ["DataSource", "TASKS", "TASK_NAMES", "Task", "check_subtask", "get_task", "load_splits", "offline_dirs"]
