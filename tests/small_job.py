"""The small job most multi-rank tests train: four tables, tiny MLPs, seconds per run."""

SMALL_JOB = ["--data.schema=demo:table_sizes=100/200/50/80", "--model.bottom_mlp=13-16-8", "--model.embedding_dim=8",
             "--model.top_mlp=16-1", "--train.global_batch_size=64", "--train.progress=false"]
