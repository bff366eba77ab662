"""`flip-scale plan --simulate`: the real training step of a layout, run as one of its ranks in
one CPU process under a fake process group and fake tensors (run.py), its collectives logged
(collectives.py). plan.py runs it in a subprocess (`python -m flip_scale.simulation`) with a
timeout and prints it beside the analytic plan."""
