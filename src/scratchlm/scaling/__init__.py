"""Scaling laws you can run: IsoFLOP sweeps of one model family, and the laws fitted to them.

    family.py  the model family: depth, width and heads tied to one dial (the depth)
    sweep.py   budgets x sizes -> ordinary pretraining runs, resumable, in parallel processes; the results table
    fit.py     Chinchilla's approach 2 (parabolas per budget -> power laws) and approach 3 (L(N, D) by Huber
               loss), bootstrap intervals, predictions; numpy and scipy only
    plots.py   isoflop.png and frontier.png

May import model, data, train and checkpoint; `scratchlm.cli.scaling` is its command line, and nothing here
imports `cli`. `fit` and `plots` load no torch, so fitting a finished sweep is quick.
"""
