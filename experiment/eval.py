"""The command line of an evaluation run: `python -m experiment.eval SOURCE [...]`, as the
`experiment-eval` command (experiment/serving/evaluate.py)."""

from experiment.serving.evaluate import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    cli()
