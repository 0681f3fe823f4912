"""Everything that writes a run: the state machine (``service``), groups, the outbox, progress, recovery,
cancellation, and the reads of the jobs list.

Importing any part of this package registers the run groups' terminal hook (``groups`` registers itself
with ``service.on_terminal``), so every process that ends a child run counts it in its group.
"""

from backend.runs import groups  # noqa: F401 - registers the group hook (see above)
