"""Prompting primitives: where a point prompt comes from (the paper's nearest neighbour assignment,
random foreground points, mask centres).

Both training (`saom_core.train`) and evaluation (`saom_core.eval`) prompt the model the same way,
so these live below both of them; the everything-mode grid they snap to is `saom_core.model.grid`.
"""
