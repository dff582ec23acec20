"""`cai train ALGO`: TRL's trainers and our PPO over a dataset folder (cai.train.run.train).

Training reads a dataset folder (a run's dataset/, a pushed upload, any TRL-shaped
parquet); it never imports the `generate` job.
"""
