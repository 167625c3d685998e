__version__ = "0.1.0"

# The oldest timm this package works with: 1.0.31 adds what it imports (timm.task.ClassificationEvaluator and
# evaluation_sample_limit, timm.loss.create_classification_loss, TrainingTask.create_evaluator).
# Keep in step with pyproject.toml's dependency; tests/test_protocol.py checks both.
MIN_TIMM = "1.0.31"
