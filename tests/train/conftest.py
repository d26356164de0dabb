"""Training tests run torch on one thread: the tiny models here gain nothing from more, and on a busy machine
OpenMP threads waiting on each other make steps many times slower. Subprocesses get OMP_NUM_THREADS=1 too."""

from __future__ import annotations


