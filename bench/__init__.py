"""delayq's benchmark: ``python -m bench`` (``make bench``, ``make bench-quick``).

One run starts one embedded broker and measures three contenders on the same workload:
``limit`` (one Kafka hop, :mod:`bench.limit`), ``seed`` (the seed service's fixed-delay-topic
algorithm, :mod:`bench.seed`) and ``delayq`` (real worker processes). See ``bench/README.md``.
"""
