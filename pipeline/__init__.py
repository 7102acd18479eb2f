"""distill-vs-rl pipeline: config, sampling, evaluation, training stages and the Luigi DAG."""
