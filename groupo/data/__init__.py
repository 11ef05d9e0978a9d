"""Tasks and prompts: built-in synthetic tasks, dataset loaders, chat prompts."""

from groupo.data.prompts import build_messages, encode_prompt
from groupo.data.registry import TASKS, extra_eval_sets, load_task
from groupo.data.task import DataError, Task, require_train

__all__ = ["TASKS", "DataError", "Task", "build_messages", "encode_prompt", "extra_eval_sets", "load_task",
           "require_train"]
