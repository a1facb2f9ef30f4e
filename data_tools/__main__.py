"""`python -m rerankforge.data_tools check FILE...`."""

from rerankforge.data_tools.cli import run

if __name__ == "__main__":
    run()
