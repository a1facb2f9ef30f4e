"""`python -m rerankforge.trainer RECIPE.yaml [--key value ...]` (also under `accelerate launch -m`)."""

from rerankforge.trainer.cli import run

if __name__ == "__main__":
    run()
