__version__ = "0.1.0"

# The oldest timm this package works with: 1.0.31 adds what it imports (timm.task.ClassificationEvaluator and
# evaluation_sample_limit, timm.loss.create_classification_loss, TrainingTask.create_evaluator).
# Keep in step with pyproject.toml's dependency; tests/test_protocol.py checks both.
MIN_TIMM = "1.0.31"


def source_commit() -> str:
    """The git commit of this package's source (`+dirty` with uncommitted changes), or '' outside a checkout."""
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(['git', '-C', str(root), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', str(root), 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ''
    return sha + ('+dirty' if dirty else '')
