"""What happens after training, beside the core (which never imports this package): a run's model merged into a
standard transformers folder (merge.py), and more to come.

    from ftnb.export import export
    export("runs/my-run", "my-model")        # merged, verified by logits against the tuned model
"""
from .merge import export

__all__ = ["export"]
