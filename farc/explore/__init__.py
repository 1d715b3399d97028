"""Design-space exploration: `farc sweep` compiles, emulates and costs one checkpoint at
every point of a grid of target overrides (grid.py parses and checks the grid, sweep.py runs
the points; farc/report/sweep.py renders the table, the Pareto plot and the HTML page)."""
