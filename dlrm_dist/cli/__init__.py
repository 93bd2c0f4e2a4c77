"""Command-line tools. ``dlrm-plan`` (plan_main.py) needs no process group."""
