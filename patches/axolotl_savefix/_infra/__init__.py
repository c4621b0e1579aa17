"""What the seams stand on: patching and undo, the table of targets, one wrapper per target, logging,
the cross-rank collectives, signal handling, and the save protocol (the journal).

Imports the rules and the standard library; Transformers and torch only where a piece needs them
(the journal's callbacks, the collectives at call time). Never a seam.
"""
