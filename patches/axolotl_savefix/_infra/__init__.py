"""What the seams stand on: patching and undo (``patching``), the releases and the table of targets
(``releases``, ``targets``), one wrapper per target (``hooks``), the save protocol (``journal``), the
cross-rank collectives (``collectives``), signal handling (``signals``), the per-epoch trigger both
per-epoch seams use (``per_epoch``: the callbacks and the ``normalize_config`` layer they share) and
logging (``log``).

Imports the rules and the standard library; Transformers and torch only where a piece needs them
(the journal's and the trigger's callbacks, the collectives at call time). Never a seam.
"""
