"""Azure ML deployment: job submission (submit.py), the per-node launcher (launch.py), the live-sampler
tunnel (connect.py) and model registration/serving (register.py). Nothing imports this package; it
imports only trainer.config and trainer.cluster (and azure-ai-ml inside functions)."""
