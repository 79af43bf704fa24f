"""Benchmarks: training-step throughput (``benchmarks.train_step``), data-loader throughput
(``benchmarks.loader``) and the FSDP2 scaling estimate (``benchmarks.scaling``).

Everything runs on CPU with tiny models (CI smoke tests) and on one GPU at paper scale;
results land in ``results/bench/`` as JSON + CSV with the device, torch version and commit.
"""
