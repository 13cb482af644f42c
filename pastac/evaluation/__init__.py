"""``pastac eval``: how well a Pasta-equipped model annotates, how much faster it answers, and at what cost.

For each prompt the adapted model decodes asynchronously; the report records
whether its annotation is valid Pasta-Lang as written, how many threads it
used, its theoretical and measured speedups (against the same text decoded by
one thread, and against Hugging Face ``generate`` of the base model's own
answer), and two offline quality proxies: the base model's log-likelihood of
the stitched answer against that of its own sequential answer, and the overlap
between sibling threads against that between the items of the sequential
answer (threads that cannot see each other tend to repeat each other).  A
pairwise judge can be plugged in for users with a strong model.
"""
