"""The fixed half of the experiment harness, behind ``prepare.py`` (the file train.py imports).

Ground floor, like ``bus/``: it imports nothing of agents/, runner/ or ledger/, and it is the runner's own
installed code (never a hypothesis's), so the trusted side of every protocol here is pristine.

* :mod:`harness.wire` — framing of the messages between an untrusted process and the trusted side.
* :mod:`harness.feed` — training data served batch by batch by the trusted side, which counts tokens and
  times the training (the budget the runner enforces).
* :mod:`harness.evaluation` — the trusted evaluation split across processes: the model runs in its own
  process and returns logits for input rows; the trusted side, which imports no agent code, holds the
  targets, checks causality on the scored rows and computes bits per byte.
"""
