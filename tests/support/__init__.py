"""What the tests share: bus helpers (proposing work, reading the stream, waiting on state) and the real
harness (prepared offline data once per session, runner configs with small budgets, train.py edits)."""
