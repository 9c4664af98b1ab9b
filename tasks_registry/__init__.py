"""seqio registrations, one module per recipe.

Importing this package registers every task and mixture (side effects of the
module imports below). Each module replaces its own registrations, so importing
or reloading twice is safe.
"""
from tasks_registry import cot  # noqa: F401
from tasks_registry import flan  # noqa: F401
from tasks_registry import ipt  # noqa: F401
from tasks_registry import smoke  # noqa: F401
from tasks_registry import symbol_tuning  # noqa: F401
