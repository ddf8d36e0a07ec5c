"""The Textual TUI (the only layer that imports textual).

Conventions for every screen (main, bench, profile):

- Torch work runs only in ``@work(thread=True, exclusive=True,
  exit_on_error=False)`` thread workers. A worker never touches a widget
  or a reactive: it calls ``self.post_message(SomeMessage(...))``
  (thread-safe) with a small dataclass from ``workbench.tui.messages``
  (add yours there); latest-value messages define ``can_replace``. Throttle
  progress to ~10 messages/s and always post the final state. Catch the
  user's exceptions in the worker and post them: the app must never die.
- Show errors with ``widgets.common.ErrorPanel``, long jobs with
  ``widgets.common.ProgressPanel``; colours in ``workbench.tui.theme``;
  pure renderers (sparkline, histogram, meter) in ``workbench.tui.render``.
- CSS lives in ``workbench/tui/styles/workbench.tcss`` (the app's
  CSS_PATH); a screen may carry its own ``DEFAULT_CSS``.
- A screen reached from the main screen gets ``(source: ScenarioSource,
  device: str)`` and builds its own Scenario from the source on a worker.
- Tests use ``workbench.tui.app.create_app(...)`` with
  ``show_volatile=False`` for snapshots (hides timings and RSS).
"""

import os

# Torch's C++ and profiler logs write to fd 2, which is where Textual draws:
# quiet them before anything in the TUI imports torch (a user's explicit
# setting wins).
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
